#include "ecdlm/kernels/small_m.h"

#include <ATen/Parallel.h>
#include <cpuid.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <limits>

#include "ecdlm/kernels/attention.h"
#include "ecdlm/kernels/backend.h"
#include "ecdlm/kernels/head.h"
#include "ecdlm/kernels/row_exact.h"
#include "ecdlm/kernels/work_split.h"
#include "ecdlm/util/error.h"

namespace ecdlm::kernels {
namespace {

using detail::kAmxK;
using detail::kAmxMaxM;

std::atomic<SmallM> g_choice{SmallM::kAuto};

// Rows up to which the AVX512-BF16 loop beats oneDNN (measured on Zen 4: 4 rows 1.44x, 8 rows
// 1.3x; at 32 rows oneDNN is compute-bound and faster).
constexpr int64_t kAvx512MaxM = 16;
// Weight rows per parallel work unit: a multiple of 16 R for every AMX fold R (<= 4).
constexpr int64_t kUnitRows = 64;
// f32 inference products up to this many token rows take the AVX-512 f32 dot tiles instead of
// OpenBLAS (single thread, Zen 5, K = 256: 126 against 54 GFLOP/s at 16 rows, 129 against 87 at 64).
constexpr int64_t kF32MaxM = 512;

bool probe_avx512_bf16() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw")) return false;
  if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return false;
  return (a >> 5) & 1U;  // CPUID.(EAX=7, ECX=1):EAX[5] = AVX512_BF16
}

SmallM resolve(SmallM c) {
  if (c != SmallM::kAuto) return c;
  if (cpu_has_amx_bf16()) return SmallM::kAmx;
  return cpu_has_avx512_bf16() ? SmallM::kAvx512 : SmallM::kTorch;
}

// The instruction set one call runs on: AMX when its tiles fit every (K, N) of the call, else
// the AVX512 loop (every AMX CPU has AVX512-BF16) for few enough rows, else none (torch).
enum class Isa { kAmx, kAvx512, kNone };

Isa isa_for(int64_t M, std::initializer_list<std::pair<int64_t, int64_t>> k_n) {
  const auto backend = small_m_backend();
  if (M < 1 || backend == SmallM::kTorch) return Isa::kNone;
  if (backend == SmallM::kAmx && M <= kAmxMaxM &&
      std::all_of(k_n.begin(), k_n.end(), [](auto kn) { return kn.first % kAmxK == 0 && kn.second % 16 == 0; }))
    return Isa::kAmx;
  return M <= kAvx512MaxM && cpu_has_avx512_bf16() ? Isa::kAvx512 : Isa::kNone;
}

// The grouped MoE (small_m_moe) on the AVX512 backend takes experts of any row count: each row's
// sums run in the same fixed order at any M, so a token's expert output does not depend on how
// many other tokens picked that expert (a served row stays independent of its batch), and all
// experts of a many-row step run in one parallel region instead of one torch GEMM after another.
// On AMX CPUs experts beyond 64 rows keep torch's path (oneDNN's AMX GEMM is faster there).
Isa moe_isa(int64_t max_m, int64_t D, int64_t F) {
  const Isa isa = isa_for(max_m, {{D, F}, {F, D}});
  if (isa == Isa::kNone && max_m >= 1 && small_m_backend() == SmallM::kAvx512 && cpu_has_avx512_bf16())
    return Isa::kAvx512;
  return isa;
}

bool plain_bf16(const torch::Tensor& t) {
  return t.defined() && t.scalar_type() == torch::kBFloat16 && t.is_contiguous() && t.device().is_cpu() &&
         !(torch::GradMode::is_enabled() && t.requires_grad());
}

const uint16_t* bits(const torch::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr()); }
uint16_t* bits(torch::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr()); }

int num_threads() { return at::in_parallel_region() ? 1 : at::get_num_threads(); }

// Reused scratch (packed inputs, hidden activations): allocated once per thread that drives calls.
uint16_t* scratch(int64_t n) {
  thread_local std::vector<uint16_t> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(static_cast<size_t>(n));
  return buf.data();
}

// One input of a product as each backend reads it: row-major x (AVX512) or packed x (AMX,
// folded by R for the weight it multiplies).
struct Operand {
  const uint16_t* x = nullptr;   // [M, K] row-major
  const uint16_t* xp = nullptr;  // packed (AMX)
  int64_t M = 0, K = 0, R = 1;
};

void rows(Isa isa, const Operand& a, const uint16_t* w, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  if (isa == Isa::kAmx)
    detail::amx_rows(a.xp, a.M, a.K, a.R, w, n0, n1, y, ldy);
  else
    detail::avx512_rows(a.x, a.M, a.K, w, n0, n1, y, ldy);
}

// An expert (or a dense SwiGLU MLP): x [M, D] -> out [M, D], weights gate/up [F, D], down [D, F].
struct SwiGluJob {
  const uint16_t* x;
  int64_t M;
  const uint16_t *gate, *up, *down;
  uint16_t* out;
};

// Three phases in one parallel region, each split into equal weight slices per thread:
// pack x (AMX) | gate and up, 64 rows a unit, into h = bf16(silu(g) * u) | down, 64 rows a unit.
void run_swiglu(const std::vector<SwiGluJob>& jobs, int64_t D, int64_t F, Isa isa) {
  const bool amx = isa == Isa::kAmx;
  const auto n = static_cast<int64_t>(jobs.size());
  // Per job: folds of the x (gate/up) and h (down) operands, and their packed buffers.
  std::vector<int64_t> rx(static_cast<size_t>(n), 1), rh(static_cast<size_t>(n), 1);
  std::vector<int64_t> xp_off(static_cast<size_t>(n) + 1, 0), h_off(static_cast<size_t>(n) + 1, 0);
  for (int64_t e = 0; e < n; ++e) {
    const auto i = static_cast<size_t>(e);
    const int64_t M = jobs[i].M;
    if (amx) {
      rx[i] = detail::amx_fold(M, D, F);
      rh[i] = detail::amx_fold(M, F, D);
    }
    xp_off[i + 1] = xp_off[i] + (amx ? detail::amx_packed_size(M, D, rx[i]) : 0);
    h_off[i + 1] = h_off[i] + (amx ? detail::amx_packed_size(M, F, rh[i]) : M * F);
  }
  uint16_t* buf = scratch(xp_off.back() + h_off.back());
  uint16_t* xp = buf;
  uint16_t* h = buf + xp_off.back();
  const int64_t f_units = (F + kUnitRows - 1) / kUnitRows, d_units = (D + kUnitRows - 1) / kUnitRows;
  const int64_t kc_per_pack = 16;
  std::vector<int64_t> pack_units(static_cast<size_t>(n) + 1, 0);  // prefix sums of pack chunks per job
  for (int64_t e = 0; e < n; ++e) {
    const auto i = static_cast<size_t>(e);
    pack_units[i + 1] = pack_units[i] + (amx ? (rx[i] * D / kAmxK + kc_per_pack - 1) / kc_per_pack : 0);
  }
  // Unit costs for the AVX512 loop: token rows plus a weight stream worth about 8 rows.
  const auto job_cost = [&](int64_t e) { return double(jobs[size_t(e)].M + 8); };
  const auto f_cost = amx ? std::vector<double>{} : detail::unit_cost_prefix(n, f_units, job_cost);
  const auto d_cost = amx ? std::vector<double>{} : detail::unit_cost_prefix(n, d_units, job_cost);
#pragma omp parallel num_threads(num_threads())
  {
    if (amx) {
#pragma omp for schedule(static)
      for (int64_t u = 0; u < pack_units.back(); ++u) {
        const auto i = static_cast<size_t>(std::upper_bound(pack_units.begin(), pack_units.end(), u) - pack_units.begin() - 1);
        const int64_t kc0 = (u - pack_units[i]) * kc_per_pack, KCx = rx[i] * D / kAmxK;
        detail::amx_pack(jobs[i].x, jobs[i].M, D, rx[i], xp + xp_off[i], kc0, std::min(KCx, kc0 + kc_per_pack));
      }
      detail::amx_begin();
    }
    alignas(64) float g[kAmxMaxM * kUnitRows], v[kAmxMaxM * kUnitRows];
    alignas(64) uint16_t hr[kAmxMaxM * kUnitRows];
    if (amx) {
#pragma omp for schedule(static)
      for (int64_t u = 0; u < n * f_units; ++u) {
        const auto i = static_cast<size_t>(u / f_units);
        const int64_t f0 = (u % f_units) * kUnitRows, f1 = std::min(F, f0 + kUnitRows);
        const auto& j = jobs[i];
        const Operand a{j.x, xp + xp_off[i], j.M, D, rx[i]};
        rows(isa, a, j.gate, f0, f1, g, kUnitRows);
        rows(isa, a, j.up, f0, f1, v, kUnitRows);
        uint16_t* he = h + h_off[i];
        // F % 32 == 0: whole 32-value chunks of the down projection's input
        for (int64_t m = 0; m < j.M; ++m)
          detail::avx512_silu_mul_bf16(g + m * kUnitRows, v + m * kUnitRows, f1 - f0, hr + m * kUnitRows);
        for (int64_t f = f0; f < f1; f += kAmxK)
          for (int64_t q = 0; q < rh[i]; ++q)  // the chunk in each fold segment, zeros included
            detail::amx_pack_chunk(hr + (f - f0), kUnitRows, j.M, F, rh[i], he, q * (F / kAmxK) + f / kAmxK);
      }
#pragma omp for schedule(static)
      for (int64_t u = 0; u < n * d_units; ++u) {
        const auto i = static_cast<size_t>(u / d_units);
        const int64_t d0 = (u % d_units) * kUnitRows, d1 = std::min(D, d0 + kUnitRows);
        const auto& j = jobs[i];
        const uint16_t* he = h + h_off[i];
        rows(isa, Operand{he, he, j.M, F, rh[i]}, j.down, d0, d1, g, kUnitRows);
        for (int64_t m = 0; m < j.M; ++m) detail::avx512_round_bf16(g + m * kUnitRows, d1 - d0, j.out + m * D + d0);
      }
      detail::amx_end();
    } else {
      // Any number of rows per expert, 64 at a time through the [64, 64] scratch; the weight
      // slice of a unit stays in L2 across those passes.
      const auto [fu0, fu1] = detail::thread_share(f_cost);
      for (int64_t u = fu0; u < fu1; ++u) {
        const auto i = static_cast<size_t>(u / f_units);
        const int64_t f0 = (u % f_units) * kUnitRows, f1 = std::min(F, f0 + kUnitRows);
        const auto& j = jobs[i];
        for (int64_t m0 = 0; m0 < j.M; m0 += kAmxMaxM) {
          const int64_t mc = std::min(kAmxMaxM, j.M - m0);
          const Operand a{j.x + m0 * D, nullptr, mc, D, 1};
          rows(isa, a, j.gate, f0, f1, g, kUnitRows);
          rows(isa, a, j.up, f0, f1, v, kUnitRows);
          uint16_t* he = h + h_off[i] + m0 * F;
          for (int64_t m = 0; m < mc; ++m)
            detail::avx512_silu_mul_bf16(g + m * kUnitRows, v + m * kUnitRows, f1 - f0, he + m * F + f0);
        }
      }
#pragma omp barrier
      const auto [du0, du1] = detail::thread_share(d_cost);
      for (int64_t u = du0; u < du1; ++u) {
        const auto i = static_cast<size_t>(u / d_units);
        const int64_t d0 = (u % d_units) * kUnitRows, d1 = std::min(D, d0 + kUnitRows);
        const auto& j = jobs[i];
        for (int64_t m0 = 0; m0 < j.M; m0 += kAmxMaxM) {
          const int64_t mc = std::min(kAmxMaxM, j.M - m0);
          const uint16_t* he = h + h_off[i] + m0 * F;
          rows(isa, Operand{he, nullptr, mc, F, 1}, j.down, d0, d1, g, kUnitRows);
          for (int64_t m = 0; m < mc; ++m)
            detail::avx512_round_bf16(g + m * kUnitRows, d1 - d0, j.out + (m0 + m) * D + d0);
        }
      }
    }
  }
}

// y [M, N] f32 = x [M, K] · wᵀ, 64 weight rows a unit.
void run_linear(const uint16_t* x, int64_t M, int64_t K, const uint16_t* w, int64_t N, float* y, Isa isa) {
  const bool amx = isa == Isa::kAmx;
  const int64_t R = amx ? detail::amx_fold(M, K, N) : 1;
  uint16_t* xp = amx ? scratch(detail::amx_packed_size(M, K, R)) : nullptr;
  const int64_t kc_per_pack = 16, KC = R * K / kAmxK, pack_units = (KC + kc_per_pack - 1) / kc_per_pack;
  constexpr int64_t kRows = kUnitRows;
  const int64_t units = (N + kRows - 1) / kRows;
  const Operand a{x, xp, M, K, R};
#pragma omp parallel num_threads(num_threads())
  {
    if (amx) {
#pragma omp for schedule(static)
      for (int64_t u = 0; u < pack_units; ++u)
        detail::amx_pack(x, M, K, R, xp, u * kc_per_pack, std::min(KC, (u + 1) * kc_per_pack));
      detail::amx_begin();
    }
#pragma omp for schedule(static)
    for (int64_t u = 0; u < units; ++u) rows(isa, a, w, u * kRows, std::min(N, (u + 1) * kRows), y + u * kRows, N);
    if (amx) detail::amx_end();
  }
}

}  // namespace

SmallM parse_small_m(const std::string& name, const std::string& flag) {
  SmallM k;
  if (name == "auto") k = SmallM::kAuto;
  else if (name == "amx") k = SmallM::kAmx;
  else if (name == "avx512") k = SmallM::kAvx512;
  else if (name == "torch") k = SmallM::kTorch;
  else fail("", flag, "unknown kernel '" + name + "'", "use auto, amx, avx512 or torch");
  if (k == SmallM::kAmx && !cpu_has_amx_bf16())
    fail("", flag, "this CPU (or OS) has no AMX-BF16", "use auto, avx512 or torch");
  if (k == SmallM::kAvx512 && !cpu_has_avx512_bf16())
    fail("", flag, "this CPU has no AVX512-BF16", "use auto or torch");
  return k;
}

const char* small_m_name(SmallM k) {
  switch (k) {
    case SmallM::kAuto: return "auto";
    case SmallM::kAmx: return "amx";
    case SmallM::kAvx512: return "avx512";
    case SmallM::kTorch: return "torch";
  }
  return "?";
}

void set_small_m(SmallM k) { g_choice = k; }
SmallM small_m_choice() { return g_choice; }
SmallM small_m_backend() { return resolve(g_choice); }

int64_t small_m_max_rows() {
  switch (small_m_backend()) {
    case SmallM::kAmx: return kAmxMaxM;
    case SmallM::kAvx512: return kAvx512MaxM;
    default: return 0;
  }
}

bool cpu_has_avx512_bf16() {
  static const bool has = probe_avx512_bf16();
  return has;
}

bool cpu_has_amx_bf16() { return detail::cpu_amx_bf16(); }

bool small_m_applies(const torch::Tensor& x_MK, const torch::Tensor& w_NK) {
  return x_MK.dim() == 2 && w_NK.dim() == 2 && x_MK.size(1) == w_NK.size(1) && plain_bf16(x_MK) &&
         plain_bf16(w_NK) && isa_for(x_MK.size(0), {{w_NK.size(1), w_NK.size(0)}}) != Isa::kNone;
}

namespace {

bool plain_f32(const torch::Tensor& t) {
  return t.defined() && t.scalar_type() == torch::kFloat32 && t.is_contiguous() && t.device().is_cpu() &&
         !(torch::GradMode::is_enabled() && t.requires_grad());
}

bool f32_applies(const torch::Tensor& x_MK, const torch::Tensor& w_NK, int64_t max_m) {
  static const bool avx512f = __builtin_cpu_supports("avx512f");
  return avx512f && small_m_backend() != SmallM::kTorch && x_MK.dim() == 2 && w_NK.dim() == 2 &&
         x_MK.size(1) == w_NK.size(1) && x_MK.size(1) >= 1 && x_MK.size(0) >= 1 && x_MK.size(0) <= max_m &&
         plain_f32(x_MK) && plain_f32(w_NK);
}

// y [M, N] f32 = x · wᵀ with the AVX-512 f32 dot tiles: every output is one fixed-order sum over K,
// so a token row's result does not depend on the other rows (nor on M).
torch::Tensor run_linear_f32(const torch::Tensor& x_MK, const torch::Tensor& w_NK) {
  const int64_t M = x_MK.size(0), K = x_MK.size(1), N = w_NK.size(0);
  auto y_MN = torch::empty({M, N}, torch::kFloat32);
  const float* x = x_MK.data_ptr<float>();
  const float* w = w_NK.data_ptr<float>();
  float* y = y_MN.data_ptr<float>();
  const int64_t units = (N + kUnitRows - 1) / kUnitRows;
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t u = 0; u < units; ++u)
    detail::avx512_rows_f32(x, M, K, w, u * kUnitRows, std::min(N, (u + 1) * kUnitRows), y + u * kUnitRows, N);
  return y_MN;
}

}  // namespace

bool small_m_f32_applies(const torch::Tensor& x_MK, const torch::Tensor& w_NK) {
  return f32_applies(x_MK, w_NK, kAmxMaxM);
}

torch::Tensor small_m_linear_f32(const torch::Tensor& x_MK, const torch::Tensor& w_NK) {
  TORCH_CHECK(small_m_f32_applies(x_MK, w_NK), "small_m_linear_f32: inputs the kernel does not take");
  return run_linear_f32(x_MK, w_NK);
}

namespace {
thread_local bool t_f32_tiles = false;
}  // namespace

F32TilesScope::F32TilesScope() : prev_(t_f32_tiles) { t_f32_tiles = true; }
F32TilesScope::~F32TilesScope() { t_f32_tiles = prev_; }
// Declared in kernels/attention.h (its only reader), so that small_m.h, which most of the engine
// includes, stays as it is.
bool f32_tiles_active() { return t_f32_tiles; }

bool f32_linear_applies(const torch::Tensor& x_MK, const torch::Tensor& w_NK) {
  return t_f32_tiles && f32_applies(x_MK, w_NK, kF32MaxM);
}

torch::Tensor f32_linear(const torch::Tensor& x_MK, const torch::Tensor& w_NK) {
  TORCH_CHECK(f32_linear_applies(x_MK, w_NK), "f32_linear: inputs the kernel does not take");
  return run_linear_f32(x_MK, w_NK);
}

bool f32_rows_applies(const torch::Tensor& x_MK, const torch::Tensor& w_NK) {
  return t_f32_tiles && f32_applies(x_MK, w_NK, std::numeric_limits<int64_t>::max());
}

torch::Tensor f32_rows(const torch::Tensor& x_MK, const torch::Tensor& w_NK) {
  TORCH_CHECK(f32_rows_applies(x_MK, w_NK), "f32_rows: inputs the kernel does not take");
  return run_linear_f32(x_MK, w_NK);
}

bool small_m_swiglu_applies(const torch::Tensor& x_MD, const torch::Tensor& gate_FD, const torch::Tensor& up_FD,
                            const torch::Tensor& down_DF) {
  if (x_MD.dim() != 2 || gate_FD.dim() != 2 || up_FD.sizes() != gate_FD.sizes() || down_DF.dim() != 2) return false;
  const int64_t D = x_MD.size(1), F = gate_FD.size(0);
  return gate_FD.size(1) == D && down_DF.size(0) == D && down_DF.size(1) == F && plain_bf16(x_MD) &&
         plain_bf16(gate_FD) && plain_bf16(up_FD) && plain_bf16(down_DF) &&
         isa_for(x_MD.size(0), {{D, F}, {F, D}}) != Isa::kNone;
}

torch::Tensor small_m_linear(const torch::Tensor& x_MK, const torch::Tensor& w_NK) {
  TORCH_CHECK(small_m_applies(x_MK, w_NK), "small_m_linear: inputs the small-M kernel does not take");
  const int64_t M = x_MK.size(0), K = x_MK.size(1), N = w_NK.size(0);
  auto y_MN = torch::empty({M, N}, torch::kFloat32);
  if (N > 0) run_linear(bits(x_MK), M, K, bits(w_NK), N, y_MN.data_ptr<float>(), isa_for(M, {{K, N}}));
  return y_MN;
}

bool head_linear_applies(const torch::Tensor& x_MK, const torch::Tensor& w_NK) {
  return small_m_backend() == SmallM::kAvx512 && cpu_has_avx512_bf16() && x_MK.dim() == 2 && w_NK.dim() == 2 &&
         x_MK.size(1) == w_NK.size(1) && x_MK.size(0) >= 1 && plain_bf16(x_MK) && plain_bf16(w_NK);
}

torch::Tensor head_linear(const torch::Tensor& x_MK, const torch::Tensor& w_NK) {
  TORCH_CHECK(head_linear_applies(x_MK, w_NK), "head_linear: inputs the kernel does not take");
  const int64_t M = x_MK.size(0), K = x_MK.size(1), N = w_NK.size(0);
  auto y_MN = torch::empty({M, N}, torch::kFloat32);
  if (M <= kAvx512MaxM) {  // small_m_linear's own path: one pass over the weights
    if (N > 0) run_linear(bits(x_MK), M, K, bits(w_NK), N, y_MN.data_ptr<float>(), Isa::kAvx512);
    return y_MN;
  }
  // 64 weight rows a unit, its token rows 64 at a time: the unit's weights and a chunk of x
  // stay in L2 together.
  const uint16_t* x = bits(x_MK);
  const uint16_t* w = bits(w_NK);
  float* y = y_MN.data_ptr<float>();
  const int64_t units = (N + kUnitRows - 1) / kUnitRows;
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t u = 0; u < units; ++u)
    for (int64_t m0 = 0; m0 < M; m0 += kAmxMaxM)
      detail::avx512_rows(x + m0 * K, std::min(kAmxMaxM, M - m0), K, w, u * kUnitRows, std::min(N, (u + 1) * kUnitRows),
                          y + m0 * N + u * kUnitRows, N);
  return y_MN;
}

torch::Tensor small_m_swiglu(const torch::Tensor& x_MD, const torch::Tensor& gate_FD, const torch::Tensor& up_FD,
                             const torch::Tensor& down_DF) {
  TORCH_CHECK(small_m_swiglu_applies(x_MD, gate_FD, up_FD, down_DF), "small_m_swiglu: inputs the kernel does not take");
  const int64_t M = x_MD.size(0), D = x_MD.size(1), F = gate_FD.size(0);
  auto out_MD = torch::empty({M, D}, torch::kBFloat16);
  run_swiglu({{bits(x_MD), M, bits(gate_FD), bits(up_FD), bits(down_DF), bits(out_MD)}}, D, F,
             isa_for(M, {{D, F}, {F, D}}));
  return out_MD;
}

bool small_m_moe_applies(const torch::Tensor& x_PD, const std::vector<int64_t>& counts,
                         const std::vector<torch::Tensor>& gate, const std::vector<torch::Tensor>& up,
                         const std::vector<torch::Tensor>& down) {
  if (counts.empty() || gate.size() != counts.size() || up.size() != counts.size() || down.size() != counts.size() ||
      x_PD.dim() != 2 || !plain_bf16(x_PD))
    return false;
  int64_t total = 0, max_m = 0;
  for (auto c : counts) {
    total += c;
    max_m = std::max(max_m, c);
  }
  if (total != x_PD.size(0) || std::any_of(counts.begin(), counts.end(), [](int64_t c) { return c < 1; })) return false;
  const int64_t D = x_PD.size(1), F = gate[0].dim() == 2 ? gate[0].size(0) : -1;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (!plain_bf16(gate[i]) || !plain_bf16(up[i]) || !plain_bf16(down[i])) return false;
    if (gate[i].sizes() != torch::IntArrayRef{F, D} || up[i].sizes() != torch::IntArrayRef{F, D} ||
        down[i].sizes() != torch::IntArrayRef{D, F})
      return false;
  }
  return moe_isa(max_m, D, F) != Isa::kNone;
}

torch::Tensor small_m_moe(const torch::Tensor& x_PD, const std::vector<int64_t>& counts,
                          const std::vector<torch::Tensor>& gate, const std::vector<torch::Tensor>& up,
                          const std::vector<torch::Tensor>& down) {
  TORCH_CHECK(small_m_moe_applies(x_PD, counts, gate, up, down), "small_m_moe: inputs the kernel does not take");
  const int64_t D = x_PD.size(1), F = gate[0].size(0);
  auto out_PD = torch::empty_like(x_PD);
  std::vector<SwiGluJob> jobs;
  jobs.reserve(counts.size());
  int64_t row = 0, max_m = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    jobs.push_back({bits(x_PD) + row * D, counts[i], bits(gate[i]), bits(up[i]), bits(down[i]), bits(out_PD) + row * D});
    row += counts[i];
    max_m = std::max(max_m, counts[i]);
  }
  run_swiglu(jobs, D, F, moe_isa(max_m, D, F));
  return out_PD;
}

namespace {

// y [P, N] f32: rows of group i (counts[i] of them, one after another) times w[i]ᵀ, every
// (group, 64 weight rows) pair one job of a single parallel region.
torch::Tensor grouped_linear_f32(const torch::Tensor& x_PK, const std::vector<int64_t>& counts,
                                 const std::vector<torch::Tensor>& w) {
  const int64_t P = x_PK.size(0), K = x_PK.size(1), N = w[0].size(0);
  auto y_PN = torch::empty({P, N}, torch::kFloat32);
  const float* x = x_PK.data_ptr<float>();
  float* y = y_PN.data_ptr<float>();
  const int64_t units = (N + kUnitRows - 1) / kUnitRows;
  std::vector<int64_t> row0(counts.size(), 0);
  for (size_t i = 1; i < counts.size(); ++i) row0[i] = row0[i - 1] + counts[i - 1];
  const auto jobs = static_cast<int64_t>(counts.size()) * units;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads())
  for (int64_t j = 0; j < jobs; ++j) {
    const auto i = static_cast<size_t>(j / units);
    const int64_t u = j % units, n0 = u * kUnitRows, n1 = std::min(N, n0 + kUnitRows);
    detail::avx512_rows_f32(x + row0[i] * K, counts[i], K, w[i].data_ptr<float>(), n0, n1, y + row0[i] * N + n0, N);
  }
  return y_PN;
}

}  // namespace

bool f32_moe_applies(const torch::Tensor& x_PD, const std::vector<int64_t>& counts,
                     const std::vector<torch::Tensor>& gate, const std::vector<torch::Tensor>& up,
                     const std::vector<torch::Tensor>& down) {
  if (counts.empty() || gate.size() != counts.size() || up.size() != counts.size() || down.size() != counts.size() ||
      x_PD.dim() != 2)
    return false;
  int64_t total = 0;
  for (auto c : counts) {
    if (c < 1 || c > kF32MaxM) return false;
    total += c;
  }
  if (total != x_PD.size(0)) return false;
  const int64_t D = x_PD.size(1), F = gate[0].dim() == 2 ? gate[0].size(0) : -1;
  if (!t_f32_tiles || D < 1 || F < 1 || !f32_applies(x_PD, gate[0], kF32MaxM * static_cast<int64_t>(counts.size())))
    return false;
  for (size_t i = 0; i < counts.size(); ++i)
    if (!plain_f32(gate[i]) || !plain_f32(up[i]) || !plain_f32(down[i]) || gate[i].sizes() != torch::IntArrayRef{F, D} ||
        up[i].sizes() != torch::IntArrayRef{F, D} || down[i].sizes() != torch::IntArrayRef{D, F})
      return false;
  return true;
}

torch::Tensor f32_moe(const torch::Tensor& x_PD, const std::vector<int64_t>& counts,
                      const std::vector<torch::Tensor>& gate, const std::vector<torch::Tensor>& up,
                      const std::vector<torch::Tensor>& down) {
  TORCH_CHECK(f32_moe_applies(x_PD, counts, gate, up, down), "f32_moe: inputs the kernel does not take");
  // Per row the same arithmetic as swiglu()'s f32 path: silu and the product are elementwise.
  const auto h_PF = torch::silu(grouped_linear_f32(x_PD, counts, gate)) * grouped_linear_f32(x_PD, counts, up);
  return grouped_linear_f32(h_PF, counts, down);
}

torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w) {
  if (x.dim() >= 1 && w.dim() == 2 && x.size(-1) == w.size(1) && x.numel() > 0) {
    const auto x_MK = x.reshape({-1, x.size(-1)});
    auto shape = x.sizes().vec();
    shape.back() = w.size(0);
    if (small_m_applies(x_MK, w)) return small_m_linear(x_MK, w).to(x.scalar_type()).view(shape);
    // bf16 in the decoders beyond the small-M rows: the same dot tiles (row_exact.h), not oneDNN,
    // so a token row's product does not change when a batch brings more rows.
    if (t_f32_tiles && x_MK.scalar_type() == torch::kBFloat16) {
      const auto xc = x_MK.contiguous();
      if (head_linear_applies(xc, w)) return head_linear(xc, w).to(x.scalar_type()).view(shape);
    }
    // Outside an F32TilesScope (training, eval) no contiguous copy is made just to be dropped.
    if (t_f32_tiles && x_MK.scalar_type() == torch::kFloat32) {
      const auto xc = x_MK.contiguous();
      if (f32_linear_applies(xc, w)) return f32_linear(xc, w).view(shape);
    }
  }
  return torch::nn::functional::linear(x, w);
}

torch::Tensor swiglu(const torch::Tensor& x, const torch::Tensor& gate, const torch::Tensor& up,
                     const torch::Tensor& down) {
  if (x.dim() >= 1 && x.numel() > 0) {
    const auto x_MD = x.reshape({-1, x.size(-1)});
    if (small_m_swiglu_applies(x_MD, gate, up, down)) return small_m_swiglu(x_MD, gate, up, down).view(x.sizes());
    // bf16 in the decoders (shared expert, dense MLP): the grouped kernel as one expert at any M
    // on the AVX512 backend, per row the bits small_m_swiglu gives that row (row_exact.h).
    if (t_f32_tiles && small_m_backend() == SmallM::kAvx512 && x_MD.is_contiguous()) {
      const std::vector<int64_t> counts = {x_MD.size(0)};
      if (small_m_moe_applies(x_MD, counts, {gate}, {up}, {down}))
        return small_m_moe(x_MD, counts, {gate}, {up}, {down}).view(x.sizes());
    }
  }
  return kernels::linear(torch::silu(kernels::linear(x, gate)) * kernels::linear(x, up), down);
}

}  // namespace ecdlm::kernels
