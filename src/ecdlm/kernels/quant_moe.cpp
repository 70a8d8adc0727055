// Quantized SwiGLU experts in one parallel region (kernels/quant.h quant_moe): the int8 twin of
// small_m.cpp's run_swiglu. Three phases in one region (2 and 3 split over the threads by cost, work_split.h):
//   1. quantize every token row of x once (gate and up share one zero point: one format);
//   2. (expert, 64 rows of F): gate and up over the expert's rows, h = silu(g) · u, and h's
//      64 columns quantized right away (64 is a multiple of the group, so no group straddles
//      two units) into the down projection's operand;
//   3. (expert, 64 rows of D): down, written as f32 or rounded to bf16.
// Experts with lane_min_rows() rows or more (16 on the row layout, 64 on the repacked copies: a
// prefill's dense MLP or shared expert) also get their x and h rows in the token-lane layout
// (after phases 1 and 2) and run the token-lane kernel (quant_lanes.cpp).
// Expert by expert, each product was its own fork/join with a single-threaded scalar activation
// quantization (x quantized twice, for gate and for up); a cached step has ~70 experts a layer.
#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "ecdlm/kernels/quant.h"
#include "ecdlm/kernels/quant_backend.h"
#include "ecdlm/kernels/work_split.h"
#include "ecdlm/util/error.h"

namespace ecdlm::kernels {
namespace {

constexpr int64_t kUnitRows = 64;  // weight rows per work unit, as quant_linear's

int num_threads() { return at::in_parallel_region() ? 1 : at::get_num_threads(); }

// Cost of one (expert, 64 weight rows) unit at M token rows: the weight stream plus the per-row
// arithmetic (relative units; only their ratios matter).
double unit_cost(int64_t M) { return 4.0 + static_cast<double>(M); }

std::string shape(const io::QuantWeight& w) { return std::to_string(w.N) + " x " + std::to_string(w.K); }

void check_experts(const torch::Tensor& x_PD, const std::vector<int64_t>& counts, const QuantExperts& ex) {
  const size_t n = counts.size();
  if (ex.gate.size() != n || ex.up.size() != n || ex.down.size() != n)
    fail("", "quant_moe", "counts and the gate / up / down lists differ in length");
  if (!x_PD.defined() || x_PD.dim() != 2 || !x_PD.device().is_cpu() ||
      (x_PD.scalar_type() != torch::kFloat32 && x_PD.scalar_type() != torch::kBFloat16))
    fail("", "quant_moe", "x must be a 2-D f32 or bf16 CPU tensor");
  int64_t total = 0;
  for (auto c : counts) {
    if (c < 0) fail("", "quant_moe", "negative row count");
    total += c;
  }
  if (total != x_PD.size(0))
    fail("", "quant_moe", "counts sum to " + std::to_string(total) + ", x has " + std::to_string(x_PD.size(0)) + " rows");
  if (n == 0) return;
  const int64_t D = x_PD.size(1), F = ex.gate[0]->N;
  for (size_t i = 0; i < n; ++i) {
    const auto &g = *ex.gate[i], &u = *ex.up[i], &d = *ex.down[i];
    if (g.K != D || u.K != D || u.N != F || g.N != F || d.N != D || d.K != F)
      fail("", "quant_moe", "expert " + std::to_string(i) + " shapes disagree: gate " + shape(g) + ", up " + shape(u) +
                                ", down " + shape(d) + " for D = " + std::to_string(D));
    if (!(g.format == ex.gate[0]->format) || !(u.format == g.format) || !(d.format == ex.down[0]->format))
      fail("", "quant_moe", "experts are quantized in different formats", "quantize all experts alike");
  }
}

// Expert by expert through quant_linear: the torch path and rows beyond the int8 kernels.
torch::Tensor moe_by_expert(const torch::Tensor& x_PD, const std::vector<int64_t>& counts, const QuantExperts& ex,
                            torch::ScalarType out, QuantKernel k) {
  auto out_PD = torch::empty({x_PD.size(0), x_PD.size(1)}, out);
  int64_t row = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (counts[i] == 0) continue;
    const auto x = x_PD.narrow(0, row, counts[i]);
    const auto g = quant_linear(x, *ex.gate[i], k), u = quant_linear(x, *ex.up[i], k);
    auto h = torch::silu(g) * u;
    if (k == QuantKernel::kBf16) h = h.to(torch::kBFloat16);  // as the bf16 MLP rounds h
    out_PD.narrow(0, row, counts[i]).copy_(quant_linear(h, *ex.down[i], k));
    row += counts[i];
  }
  return out_PD;
}

}  // namespace

torch::Tensor quant_moe(const torch::Tensor& x_PD, const std::vector<int64_t>& counts, const QuantExperts& ex,
                        torch::ScalarType out, QuantKernel k) {
  check_experts(x_PD, counts, ex);
  if (out != torch::kFloat32 && out != torch::kBFloat16) fail("", "quant_moe", "out must be f32 or bf16");
  const auto backend = k == QuantKernel::kAuto ? quant_kernel_backend() : k;
  detail::require_quant_kernel(backend, "quant_moe");
  const int64_t P = x_PD.size(0), D = x_PD.size(1);
  const int64_t max_m = counts.empty() ? 0 : *std::max_element(counts.begin(), counts.end());
  if (P == 0) return torch::empty({0, D}, out);
  // On repacked weights and in the decoders the fused path takes any expert size (moe_by_expert's
  // torch SiLU and separate products would round a row differently once its expert got more than
  // 64 rows).
  if (backend == QuantKernel::kTorch || backend == QuantKernel::kBf16 ||
      (max_m > detail::kInt8MaxRows && !detail::int8_any_rows(backend)))
    return moe_by_expert(x_PD, counts, ex, out, k);

  const bool vnni = is_vnni(backend);
  const auto gf = ex.gate[0]->format, df = ex.down[0]->format;
  const int64_t F = ex.gate[0]->N;
  // Non-empty experts and their first rows.
  std::vector<size_t> ids;
  std::vector<int64_t> row0;
  for (int64_t i = 0, r = 0; i < static_cast<int64_t>(counts.size()); r += counts[size_t(i)], ++i)
    if (counts[size_t(i)] > 0) {
      ids.push_back(size_t(i));
      row0.push_back(r);
    }
  const auto n = static_cast<int64_t>(ids.size());
  std::vector<detail::QwOperand> gw, uw, dw;
  // On vnni with repacking on, every expert's output-lane copies (quant_repack.cpp), held for the
  // call: the few-row kernel's operand, and read in place by the token-lane kernel (64+ rows).
  std::vector<std::shared_ptr<const detail::Packed>> held;
  const bool repack = vnni && quant_repack();
  for (size_t e = 0; e < ids.size(); ++e) {
    const auto i = ids[e];
    gw.push_back(detail::weight_operand(*ex.gate[i]));
    uw.push_back(detail::weight_operand(*ex.up[i]));
    dw.push_back(detail::weight_operand(*ex.down[i]));
    if (repack) {
      for (auto [op, w] : {std::pair{&gw.back(), ex.gate[i]}, {&uw.back(), ex.up[i]}, {&dw.back(), ex.down[i]}}) {
        held.push_back(detail::packed(*w));
        op->packed = held.back().get();
        op->amx = backend == QuantKernel::kAmx && detail::amx_packed_applies(*op->packed, *op);
      }
    }
  }
  thread_local detail::QxScratch xbuf, hbuf;
  const auto xs = xbuf.store(P, D, gf.group), hs = hbuf.store(P, F, df.group);
  const auto xq = xs.view(), hq = hs.view();
  const int32_t zx = detail::vnni_zero_point(gf.kind), zh = detail::vnni_zero_point(df.kind);
  const auto xc = x_PD.contiguous();
  const bool x_f32 = xc.scalar_type() == torch::kFloat32;
  auto out_PD = torch::empty({P, D}, out);
  const bool out_f32 = out == torch::kFloat32;
  const int64_t f_units = (F + kUnitRows - 1) / kUnitRows, d_units = (D + kUnitRows - 1) / kUnitRows;
  const auto rows = vnni ? detail::vnni_rows : detail::avx2_rows;
  const auto silu_mul = vnni ? detail::avx512_silu_mul : detail::silu_mul_scalar;
  const auto round_bf16 = vnni ? detail::avx512_round_bf16_f : detail::round_bf16_scalar;
  // Experts with many rows (a dense MLP or shared expert at a 32-token block) take the token-lane
  // kernel (quant_lanes.cpp): x's and h's rows in 16-token lanes, built once per expert. Not on
  // AMX tiles, which take every row count.
  std::vector<int64_t> wide;
  if (vnni && (repack || detail::row_layout_lanes()))
    for (int64_t e = 0; e < n; ++e)
      if (counts[ids[size_t(e)]] >= detail::lane_min_rows(repack) &&
          !(gw[size_t(e)].amx && uw[size_t(e)].amx && dw[size_t(e)].amx))
        wide.push_back(e);
  std::vector<detail::QxLaneScratch> lane_buf(wide.size() * 2);
  std::vector<detail::QxLanes> xl(static_cast<size_t>(n)), hl(static_cast<size_t>(n));  // TB == 0: none
  const auto n_wide = static_cast<int64_t>(wide.size());
  // Cost prefix sums over the units of phases 2 (f_units per expert) and 3 (d_units).
  const auto expert_cost = [&](int64_t e) { return unit_cost(counts[ids[size_t(e)]]); };
  const auto fpre = detail::unit_cost_prefix(n, f_units, expert_cost);
  const auto dpre = detail::unit_cost_prefix(n, d_units, expert_cost);
#pragma omp parallel num_threads(num_threads())
  {
    std::vector<float> row_f32;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < P; ++r) {
      const float* v = x_f32 ? xc.data_ptr<float>() + r * D
                             : detail::bf16_row(xc.data_ptr<at::BFloat16>() + r * D, D, row_f32);
      detail::quantize_row(v, D, xs, r, 0, zx);
    }
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n_wide; ++i) {
      const int64_t e = wide[size_t(i)];
      xl[size_t(e)] = detail::build_lanes(detail::rows_of(xq, row0[size_t(e)], counts[ids[size_t(e)]]), zx,
                                          lane_buf[size_t(2 * i)]);
    }
    // [rows of one expert, 64 weight rows] tiles.
    std::vector<float> g(static_cast<size_t>(max_m * kUnitRows)), u(g.size());
    const auto [f_t0, f_t1] = detail::thread_share(fpre);
    for (int64_t t = f_t0; t < f_t1; ++t) {
      const int64_t e = t / f_units, f0 = (t % f_units) * kUnitRows, f1 = std::min(F, f0 + kUnitRows);
      const int64_t M = counts[ids[size_t(e)]], r0 = row0[size_t(e)];
      if (xl[size_t(e)].TB > 0) {
        detail::vnni_lane_rows(xl[size_t(e)], gw[size_t(e)], f0, f1, g.data(), kUnitRows);
        detail::vnni_lane_rows(xl[size_t(e)], uw[size_t(e)], f0, f1, u.data(), kUnitRows);
      } else {
        const auto x = detail::rows_of(xq, r0, M);
        rows(x, gw[size_t(e)], f0, f1, g.data(), kUnitRows);
        rows(x, uw[size_t(e)], f0, f1, u.data(), kUnitRows);
      }
      for (int64_t m = 0; m < M; ++m) {
        float* gm = g.data() + m * kUnitRows;
        silu_mul(gm, u.data() + m * kUnitRows, f1 - f0);
        detail::quantize_row(gm, f1 - f0, hs, r0 + m, f0, zh);
      }
    }
#pragma omp barrier
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n_wide; ++i) {
      const int64_t e = wide[size_t(i)];
      hl[size_t(e)] = detail::build_lanes(detail::rows_of(hq, row0[size_t(e)], counts[ids[size_t(e)]]), zh,
                                          lane_buf[size_t(2 * i + 1)]);
    }
    const auto [d_t0, d_t1] = detail::thread_share(dpre);
    for (int64_t t = d_t0; t < d_t1; ++t) {
      const int64_t e = t / d_units, d0 = (t % d_units) * kUnitRows, d1 = std::min(D, d0 + kUnitRows);
      const int64_t M = counts[ids[size_t(e)]], r0 = row0[size_t(e)];
      const auto h = detail::rows_of(hq, r0, M);
      const auto down = [&](float* y, int64_t ldy) {
        if (hl[size_t(e)].TB > 0)
          detail::vnni_lane_rows(hl[size_t(e)], dw[size_t(e)], d0, d1, y, ldy);
        else
          rows(h, dw[size_t(e)], d0, d1, y, ldy);
      };
      if (out_f32) {
        down(out_PD.data_ptr<float>() + r0 * D + d0, D);
        continue;
      }
      down(g.data(), kUnitRows);
      auto* o = reinterpret_cast<uint16_t*>(out_PD.data_ptr<at::BFloat16>());
      for (int64_t m = 0; m < M; ++m) round_bf16(g.data() + m * kUnitRows, d1 - d0, o + (r0 + m) * D + d0);
    }
  }
  return out_PD;
}

}  // namespace ecdlm::kernels
