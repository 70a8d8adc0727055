#include "ecdlm/kernels/quant.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cpuid.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "ecdlm/kernels/backend.h"
#include "ecdlm/kernels/convert.h"
#include "ecdlm/kernels/quant_backend.h"
#include "ecdlm/kernels/small_m.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/log.h"

namespace ecdlm::kernels {
namespace {

using io::QuantKind;

std::atomic<QuantKernel> g_choice{QuantKernel::kAuto};

using detail::kInt8MaxRows;
// Weight rows per parallel work unit, as the bf16 kernels.
constexpr int64_t kUnitRows = 64;
// Token rows per pass of the token-lane kernel.
constexpr int64_t kLaneChunkRows = 128;
// The dequantizing bf16 path: weight rows per tile (32 x K = 2048 in bf16: 128 KB, in L2).
constexpr int64_t kDeqRows = 32;

bool cpuid_bit(unsigned leaf, unsigned sub, int reg, int bit) {
  unsigned r[4] = {0, 0, 0, 0};
  if (!__get_cpuid_count(leaf, sub, &r[0], &r[1], &r[2], &r[3])) return false;
  return (r[reg] >> bit) & 1U;
}

bool probe_vnni() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && cpuid_bit(7, 0, 2, 11) /* ECX[11] AVX512_VNNI */ &&
         cpuid_bit(1, 0, 2, 29) /* ECX[29] F16C */;
}

bool probe_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpuid_bit(1, 0, 2, 29);
}

QuantKernel resolve(QuantKernel c) {
  if (c != QuantKernel::kAuto) return c;  // kBf16 forced: every M
  if (cpu_has_amx_int8()) return QuantKernel::kAmx;
  if (cpu_has_avx512_vnni()) return QuantKernel::kVnni;
  return cpu_has_avx2() ? QuantKernel::kAvx2 : QuantKernel::kTorch;
}

}  // namespace

void detail::require_quant_kernel(QuantKernel k, const std::string& flag) {
  if (k == QuantKernel::kVnni && !cpu_has_avx512_vnni())
    fail("", flag, "this CPU has no AVX512-VNNI", "use auto, avx2 or torch");
  if (k == QuantKernel::kAmx && !cpu_has_amx_int8() && !(detail::amx_int8_emulated() && cpu_has_avx512_vnni()))
    fail("", flag, "this CPU has no AMX-INT8 (or the OS did not grant tile data, or the tiles failed the start-up self-check)", "use auto or vnni");
  if (k == QuantKernel::kAvx2 && !cpu_has_avx2()) fail("", flag, "this CPU has no AVX2/FMA/F16C", "use auto or torch");
  if (k == QuantKernel::kBf16 && !cpu_has_avx512_bf16()) fail("", flag, "this CPU has no AVX512-BF16", "use auto or torch");
}

namespace {

int num_threads() { return at::in_parallel_region() ? 1 : at::get_num_threads(); }

void check_operands(const torch::Tensor& x_MK, const io::QuantWeight& w, const char* what) {
  if (!x_MK.defined() || x_MK.dim() != 2)
    fail("", what, "x must be 2-D [M, K], got " + (x_MK.defined() ? std::to_string(x_MK.dim()) + "-D" : "none"));
  if (x_MK.scalar_type() != torch::kFloat32 && x_MK.scalar_type() != torch::kBFloat16)
    fail("", what, "x must be f32 or bf16");
  if (!x_MK.device().is_cpu()) fail("", what, "x must be on the CPU");
  if (x_MK.size(1) != w.K)
    fail("", what, "x has K = " + std::to_string(x_MK.size(1)) + ", the weight " + std::to_string(w.N) + " x " +
                       std::to_string(w.K));
  if (!w.qweight.defined() || !w.scales.defined()) fail("", what, "the quantized weight is empty");
}

// The int8 kernels' operand for x_MK's rows: thread-local buffers, reused across calls.
detail::QxOperand prepare_x(const torch::Tensor& x_MK, const io::QuantWeight& w) {
  thread_local detail::QxScratch buf;
  const int64_t M = x_MK.size(0), K = w.K;
  const auto store = buf.store(M, K, w.format.group);
  const int32_t z = detail::vnni_zero_point(w.format.kind);
  const bool f32 = x_MK.scalar_type() == torch::kFloat32;
  const auto xc = x_MK.contiguous();
  // Rows on all threads from a cached step's 32 x 2048 (serial, the other thread waited ~4 ms per
  // 20-layer forward); a row's codes do not depend on which thread made them.
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (M * K >= 32768)
  for (int64_t m = 0; m < M; ++m) {
    thread_local std::vector<float> row;
    const float* v = f32 ? xc.data_ptr<float>() + m * K : detail::bf16_row(xc.data_ptr<at::BFloat16>() + m * K, K, row);
    detail::quantize_row(v, K, store, m, 0, z);
  }
  return store.view();
}

torch::Tensor run_int8(const torch::Tensor& x_MK, const io::QuantWeight& w, QuantKernel k) {
  const int64_t M = x_MK.size(0), N = w.N;
  auto y_MN = torch::empty({M, N}, torch::kFloat32);
  if (N == 0) return y_MN;
  const auto x = prepare_x(x_MK, w);
  const auto wo = detail::weight_operand(w);
  float* y = y_MN.data_ptr<float>();
  const int64_t units = (N + kUnitRows - 1) / kUnitRows;
  const bool vnni = is_vnni(k);
  // On vnni with repacking on, the output-lane copy (quant_repack.cpp): the few-row kernel's
  // operand, and read in place by the token-lane kernel (no per-call panel copy) or, on amx, by
  // the tiles at every row count from kPackedAmxMinRows.
  auto wo_rows = wo;
  std::shared_ptr<const detail::Packed> pk;
  if (vnni && quant_repack()) {
    pk = detail::packed(w);
    wo_rows.packed = pk.get();
    wo_rows.amx = k == QuantKernel::kAmx && detail::amx_packed_applies(*pk, wo);
  }
  if (vnni && !wo_rows.amx && M >= detail::lane_min_rows(wo_rows.packed != nullptr) &&
      (wo_rows.packed || detail::row_layout_lanes())) {
    // many rows: 16 tokens per vector (quant_lanes.cpp)
    thread_local detail::QxLaneScratch lane_buf;
    // Chunks of 128 tokens (a prefill's rows): wider lanes leave L1 (a K block's lanes 4 KB per
    // 16 tokens, at a stride that hits the same sets): BM_QuantPrefill measured q8 at 256 rows in
    // one pass 309 GFLOP/s against 431 at 128. Each token's sums are the same either way.
    for (int64_t m0 = 0; m0 < M; m0 += kLaneChunkRows) {
      const auto rows = detail::rows_of(x, m0, std::min(kLaneChunkRows, M - m0));
      const auto xl = detail::build_lanes(rows, detail::vnni_zero_point(w.format.kind), lane_buf);
#pragma omp parallel for schedule(static) num_threads(num_threads())
      for (int64_t u = 0; u < units; ++u) {
        const int64_t n0 = u * kUnitRows, n1 = std::min(N, n0 + kUnitRows);
        detail::vnni_lane_rows(xl, wo_rows, n0, n1, y + m0 * N + n0, N);
      }
    }
    return y_MN;
  }
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t u = 0; u < units; ++u) {
    const int64_t n0 = u * kUnitRows, n1 = std::min(N, n0 + kUnitRows);
    if (vnni)
      detail::vnni_rows(x, wo_rows, n0, n1, y + n0, N);
    else
      detail::avx2_rows(x, wo, n0, n1, y + n0, N);
  }
  return y_MN;
}

// The bf16 path (opt-in: set_quant_kernel(kBf16) or a forced path): each unit's weight rows dequantized to bf16 in a
// thread-local tile (L2), then the bf16 kernel's 4 x 4 vdpbf16ps tiles (gemm_avx512.cpp) over all
// rows: 2 instructions per 64 inputs and (row, token) against the int8 tiles' 4, x exact in bf16,
// the weight rounded to bf16 (at most 2^-8 relative). The dequantizing costs about as much again:
// BM_QuantLinear (one thread, 2048 x 2048, a loaded Zen 5) measured it no faster than vnni at 32
// rows and ~3x slower at 1-4, so `auto` does not take it.
torch::Tensor run_deq(const torch::Tensor& x_MK, const io::QuantWeight& w) {
  const auto xb = x_MK.to(torch::kBFloat16).contiguous();
  const int64_t M = xb.size(0), K = w.K, N = w.N;
  auto y_MN = torch::empty({M, N}, torch::kFloat32);
  const auto wo = detail::weight_operand(w);
  const auto* x = reinterpret_cast<const uint16_t*>(xb.data_ptr());
  float* y = y_MN.data_ptr<float>();
  const int64_t units = (N + kDeqRows - 1) / kDeqRows;
#pragma omp parallel num_threads(num_threads())
  {
    std::vector<uint16_t> tile(static_cast<size_t>(kDeqRows * K));
#pragma omp for schedule(static)
    for (int64_t u = 0; u < units; ++u) {
      const int64_t n0 = u * kDeqRows, n1 = std::min(N, n0 + kDeqRows);
      for (int64_t n = n0; n < n1; ++n) detail::avx512_dequant_row_bf16(wo, n, tile.data() + (n - n0) * K);
      detail::avx512_rows(x, M, K, tile.data(), 0, n1 - n0, y + n0, N);
    }
  }
  return y_MN;
}

// Dequantized 64-row tiles (in parallel) into one weight of x's dtype, then torch's GEMM: the
// many-row path. (The scalar tiles measured faster than dequantizing with torch's vector ops, whose
// f32 temporaries stream the weight several times.)
torch::Tensor run_torch(const torch::Tensor& x_MK, const io::QuantWeight& w) {
  const auto dtype = x_MK.scalar_type();
  auto w_NK = torch::empty({w.N, w.K}, dtype);
  const int64_t units = (w.N + kUnitRows - 1) / kUnitRows;
  at::parallel_for(0, units, 1, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t n0 = u * kUnitRows, n1 = std::min(w.N, n0 + kUnitRows);
      w_NK.narrow(0, n0, n1 - n0).copy_(io::dequantize_rows(w, n0, n1));
    }
  });
  return torch::nn::functional::linear(x_MK.contiguous(), w_NK).to(torch::kFloat32);
}

}  // namespace

namespace detail {

QwOperand weight_operand(const io::QuantWeight& w) {
  QwOperand op;
  op.kind = w.format.kind;
  op.K = w.K;
  op.G = w.format.group;
  op.row_bytes = w.qweight.size(1);
  op.q = reinterpret_cast<const uint8_t*>(w.qweight.data_ptr());
  op.d = reinterpret_cast<const uint16_t*>(w.scales.data_ptr());
  op.m = w.mins.defined() ? reinterpret_cast<const uint16_t*>(w.mins.data_ptr()) : nullptr;
  return op;
}

QxStore QxScratch::store(int64_t M, int64_t K, int64_t G) {
  const auto grow = [](auto& v, int64_t n) {
    if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
    return v.data();
  };
  QxStore st;
  st.M = M;
  st.K = K;
  st.G = G;
  st.q = grow(q, M * K);
  st.d = grow(d, M * K / G);
  st.c = grow(c, M * K / G);
  st.s = grow(s, M * K / 4);
  st.bias = grow(bias, M * K / 4);
  st.gb = grow(gb, M * K / G);
  return st;
}

const float* bf16_row(const at::BFloat16* x, int64_t n, std::vector<float>& buf) {
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(static_cast<size_t>(n));
  bf16_to_f32(reinterpret_cast<const uint16_t*>(x), n, buf.data());
  return buf.data();
}

void quantize_row_scalar(const float* v, int64_t n, const QxStore& x, int64_t m, int64_t k0, int32_t z) {
  const int64_t K = x.K, G = x.G;
  for (int64_t g0 = 0; g0 < n; g0 += G) {
    float amax = 0;
    for (int64_t i = 0; i < G; ++i) amax = std::max(amax, std::fabs(v[g0 + i]));
    const float dg = amax / 127.0F, inv = amax > 0 ? 127.0F / amax : 0.0F;
    const int64_t k = m * K + k0 + g0;
    int8_t* qg = x.q + k;
    int32_t sum = 0;
    for (int64_t i = 0; i < G; ++i) {
      qg[i] = static_cast<int8_t>(std::clamp(std::nearbyint(v[g0 + i] * inv), -127.0F, 127.0F));
      sum += qg[i];
    }
    x.d[k / G] = dg;
    x.c[k / G] = dg * static_cast<float>(sum);
    x.gb[k / G] = -z * sum;
    for (int64_t l = 0; l < G / 4; ++l) {
      x.s[k / 4 + l] = dg;
      x.bias[k / 4 + l] = -z * (qg[4 * l] + qg[4 * l + 1] + qg[4 * l + 2] + qg[4 * l + 3]);
    }
  }
}

void quantize_row(const float* v, int64_t n, const QxStore& x, int64_t m, int64_t k0, int32_t z) {
  if (cpu_has_avx512_vnni())
    avx512_quantize_row(v, n, x, m, k0, z);
  else
    quantize_row_scalar(v, n, x, m, k0, z);
}

void silu_mul_scalar(float* g, const float* u, int64_t n) {
  for (int64_t i = 0; i < n; ++i) g[i] = g[i] / (1.0F + std::exp(-g[i])) * u[i];
}

void round_bf16_scalar(const float* y, int64_t n, uint16_t* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = c10::BFloat16(y[i]).x;
}

float q4_tail(const QxOperand& x, int64_t m, const QwOperand& w, int64_t n, int64_t k0) {
  const int64_t K = w.K, G = w.G, KG = K / G, half = (K - k0) / 2;
  const int32_t z = w.kind == io::QuantKind::kQ4Sym ? 8 : 0;
  const uint8_t* b = w.q + n * w.row_bytes + k0 / 2;
  const int8_t* xq = x.q + m * K;
  float out = 0;
  for (int64_t g = k0 / G; g < KG; ++g) {
    int32_t dot = 0;
    for (int64_t k = g * G; k < (g + 1) * G; ++k) {
      const int64_t i = k - k0;  // position in the tail chunk
      const int32_t code = i < half ? b[i] & 15 : b[i - half] >> 4;
      dot += (code - z) * xq[k];
    }
    c10::Half dw;
    dw.x = w.d[n * KG + g];
    out += static_cast<float>(dot) * static_cast<float>(dw) * x.d[m * KG + g];
  }
  return out;
}

}  // namespace detail

QuantKernel parse_quant_kernel(const std::string& name, const std::string& flag) {
  QuantKernel k;
  if (name == "auto") k = QuantKernel::kAuto;
  else if (name == "vnni") k = QuantKernel::kVnni;
  else if (name == "amx") k = QuantKernel::kAmx;
  else if (name == "avx2") k = QuantKernel::kAvx2;
  else if (name == "torch") k = QuantKernel::kTorch;
  else if (name == "bf16") k = QuantKernel::kBf16;
  else fail("", flag, "unknown quantized kernel '" + name + "'", "use auto, amx, vnni, avx2, bf16 or torch");
  detail::require_quant_kernel(k, flag);
  return k;
}

const char* quant_kernel_name(QuantKernel k) {
  switch (k) {
    case QuantKernel::kAuto: return "auto";
    case QuantKernel::kVnni: return "vnni";
    case QuantKernel::kAvx2: return "avx2";
    case QuantKernel::kTorch: return "torch";
    case QuantKernel::kBf16: return "bf16";
    case QuantKernel::kAmx: return "amx";
  }
  return "?";
}

void set_quant_kernel(QuantKernel k) { g_choice = k; }
QuantKernel quant_kernel_choice() { return g_choice; }
QuantKernel quant_kernel_backend() { return resolve(g_choice); }

bool cpu_has_avx512_vnni() {
  static const bool has = probe_vnni();
  return has;
}

bool cpu_has_amx_int8() {
  static const bool has = [] {
    if (!cpu_has_avx512_vnni() || !detail::cpu_amx_int8()) return false;
    const bool agrees = detail::amx_int8_self_check(false);
    if (!agrees) LOG_WARN("AMX-INT8: the tiles disagreed with the VNNI kernel on a self-check; using vnni");
    return agrees;
  }();
  return has;
}

bool cpu_has_avx2() {
  static const bool has = probe_avx2();
  return has;
}

int64_t quant_max_rows() { return quant_kernel_backend() == QuantKernel::kTorch ? 0 : kInt8MaxRows; }

QuantizedX quantize_activations(const torch::Tensor& x_MK, int64_t G) {
  TORCH_CHECK(x_MK.dim() == 2 && G > 0 && x_MK.size(1) % G == 0, "quantize_activations: bad shape");
  io::QuantWeight shape_only;  // prepare_x reads K, the group and the kind only
  shape_only.K = x_MK.size(1);
  shape_only.format = {QuantKind::kQ4, G};
  const auto op = prepare_x(x_MK, shape_only);
  const int64_t M = x_MK.size(0), K = x_MK.size(1);
  QuantizedX out;
  out.q_MK = torch::from_blob(const_cast<int8_t*>(op.q), {M, K}, torch::kInt8).clone();
  out.d_MG = torch::from_blob(const_cast<float*>(op.d), {M, K / G}, torch::kFloat32).clone();
  return out;
}

torch::Tensor quant_linear(const torch::Tensor& x_MK, const io::QuantWeight& w) {
  return quant_linear(x_MK, w, QuantKernel::kAuto);
}

torch::Tensor quant_linear(const torch::Tensor& x_MK, const io::QuantWeight& w, QuantKernel k) {
  check_operands(x_MK, w, "quant_linear");
  detail::require_quant_kernel(k, "quant_linear");
  if (k == QuantKernel::kAuto) {
    const int64_t M = x_MK.size(0);
    k = resolve(quant_kernel_choice());
    // On repacked weights the int8 products also measured faster than dequantizing + oneDNN at
    // 256 rows (BM_QuantPrefill).
    if (k != QuantKernel::kBf16 && M > kInt8MaxRows && !detail::int8_any_rows(k)) k = QuantKernel::kTorch;
  }
  if (x_MK.size(0) == 0 || w.N == 0) return torch::zeros({x_MK.size(0), w.N}, torch::kFloat32);
  switch (k) {
    case QuantKernel::kTorch: return run_torch(x_MK, w);
    case QuantKernel::kBf16: return run_deq(x_MK, w);
    default: return run_int8(x_MK, w, k);
  }
}

torch::Tensor quant_linear_reference(const torch::Tensor& x_MK, const io::QuantWeight& w, bool quantize_x) {
  check_operands(x_MK, w, "quant_linear_reference");
  torch::Tensor x = x_MK.to(torch::kFloat64);
  if (quantize_x) {
    const int64_t G = w.format.group;
    const auto qx = quantize_activations(x_MK, G);
    x = (qx.q_MK.to(torch::kFloat64).view({x.size(0), -1, G}) * qx.d_MG.to(torch::kFloat64).unsqueeze(2))
            .view({x.size(0), w.K});
  }
  return torch::matmul(x, io::dequantize(w).to(torch::kFloat64).t());
}

torch::Tensor quant_swiglu(const torch::Tensor& x_MD, const io::QuantWeight& gate, const io::QuantWeight& up,
                           const io::QuantWeight& down, torch::ScalarType out) {
  if (!x_MD.defined() || x_MD.dim() != 2) fail("", "quant_swiglu", "x must be 2-D [M, D]");
  return quant_moe(x_MD, {x_MD.size(0)}, QuantExperts{{&gate}, {&up}, {&down}}, out);
}

}  // namespace ecdlm::kernels
