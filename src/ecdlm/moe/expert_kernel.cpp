#include "ecdlm/moe/expert_kernel.h"

// GCC 12's _mm512_reduce_add_ps passes _mm256_undefined_pd() by design: a false -Wuninitialized.
#pragma GCC diagnostic ignored "-Wuninitialized"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <cpuid.h>
#include <immintrin.h>

#include <atomic>
#include <cmath>

#include "ecdlm/util/error.h"

namespace ecdlm::moe {

namespace {

std::atomic<ExpertKernel> g_kernel{ExpertKernel::kAuto};

#define ECDLM_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// Weight rows per cache block: 64 rows of K = 2048 bf16 are 256 KB, inside Zen 4's 1 MB L2, so
// the second and later 4-row chunks of x re-read them from L2, not memory.
constexpr int64_t kBlockN = 64;

// The four sums of a, b, c, d (16 lanes each) into y[0..3]: one shuffle tree instead of four
// separate horizontal reductions, which cost as much as the dot products when K is 512.
ECDLM_BF16_TARGET inline void reduce4(__m512 a, __m512 b, __m512 c, __m512 d, float* y) {
  const __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
  const __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, 0x44), _mm512_shuffle_f32x4(c, d, 0xEE));
  __m512 t = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88), _mm512_shuffle_f32x4(ab, cd, 0xDD));
  t = _mm512_add_ps(t, _mm512_permute_ps(t, 0x4E));
  t = _mm512_add_ps(t, _mm512_permute_ps(t, 0xB1));
  _mm_storeu_ps(y, _mm512_castps512_ps128(_mm512_maskz_compress_ps(0x1111, t)));
}

// Software prefetch distance (bf16 elements) along each weight row; measured 10-20% on top of
// the hardware prefetchers for 1 KB rows (K = 512, the down projection).
constexpr int64_t kPrefetch = 512;

// acc[r][m] += x[m, k:k+32] · w[r, k:k+32] over all k; y[m * ldy + r] = the sums. RT weight rows
// stream side by side (4 sequential streams keep the prefetchers busy); MC x rows stay in L1.
// The accumulators must stay in registers: the unroll pragmas make the loops vanish at -O2 too.
template <int MC, int RT>
ECDLM_BF16_TARGET void dot_tile(const uint16_t* x, const uint16_t* w, int64_t K, float* y, int64_t ldy) {
  __m512 acc[RT][MC];
  #pragma GCC unroll 4
  for (int r = 0; r < RT; ++r)
    #pragma GCC unroll 4
    for (int m = 0; m < MC; ++m) acc[r][m] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    __m512bh w_v[RT];
    #pragma GCC unroll 4
    for (int r = 0; r < RT; ++r) {
      w_v[r] = (__m512bh)_mm512_loadu_si512(w + r * K + k);
      _mm_prefetch(reinterpret_cast<const char*>(w + r * K + k + kPrefetch), _MM_HINT_T0);
    }
    #pragma GCC unroll 4
    for (int m = 0; m < MC; ++m) {
      const auto x_v = (__m512bh)_mm512_loadu_si512(x + m * K + k);
      #pragma GCC unroll 4
      for (int r = 0; r < RT; ++r) acc[r][m] = _mm512_dpbf16_ps(acc[r][m], x_v, w_v[r]);
    }
  }
  if (k < K) {  // masked tail: lanes past K load as zero
    const auto mask = static_cast<__mmask32>((1ULL << (K - k)) - 1);
    __m512bh w_v[RT];
    #pragma GCC unroll 4
    for (int r = 0; r < RT; ++r) w_v[r] = (__m512bh)_mm512_maskz_loadu_epi16(mask, w + r * K + k);
    #pragma GCC unroll 4
    for (int m = 0; m < MC; ++m) {
      const auto x_v = (__m512bh)_mm512_maskz_loadu_epi16(mask, x + m * K + k);
      #pragma GCC unroll 4
      for (int r = 0; r < RT; ++r) acc[r][m] = _mm512_dpbf16_ps(acc[r][m], x_v, w_v[r]);
    }
  }
  if constexpr (RT == 4) {
    #pragma GCC unroll 4
    for (int m = 0; m < MC; ++m) reduce4(acc[0][m], acc[1][m], acc[2][m], acc[3][m], y + m * ldy);
  } else {
    #pragma GCC unroll 4
    for (int m = 0; m < MC; ++m)
      #pragma GCC unroll 4
      for (int r = 0; r < RT; ++r) y[m * ldy + r] = _mm512_reduce_add_ps(acc[r][m]);
  }
}

template <int RT>
void dot_tile_m(int64_t mc, const uint16_t* x, const uint16_t* w, int64_t K, float* y, int64_t ldy) {
  switch (mc) {
    case 1: return dot_tile<1, RT>(x, w, K, y, ldy);
    case 2: return dot_tile<2, RT>(x, w, K, y, ldy);
    case 3: return dot_tile<3, RT>(x, w, K, y, ldy);
    default: return dot_tile<4, RT>(x, w, K, y, ldy);
  }
}

// y_MN[:, n_begin:n_end] = x_MK · w[n_begin:n_end]ᵀ.
void gemm_rows(const uint16_t* x, int64_t M, int64_t K, const uint16_t* w, int64_t n_begin, int64_t n_end,
               float* y, int64_t N) {
  for (int64_t nb = n_begin; nb < n_end; nb += kBlockN) {
    const int64_t ne = std::min(n_end, nb + kBlockN);
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
      const int64_t mc = std::min<int64_t>(4, M - m0);
      int64_t n = nb;
      for (; n + 4 <= ne; n += 4) dot_tile_m<4>(mc, x + m0 * K, w + n * K, K, y + m0 * N + n, N);
      for (; n < ne; ++n) dot_tile_m<1>(mc, x + m0 * K, w + n * K, K, y + m0 * N + n, N);
    }
  }
}

void gemm(const uint16_t* x, int64_t M, int64_t K, const uint16_t* w, int64_t N, float* y) {
  at::parallel_for(0, N, kBlockN, [&](int64_t b, int64_t e) { gemm_rows(x, M, K, w, b, e, y, N); });
}

const uint16_t* bf16_ptr(const torch::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr()); }

bool detect_avx512_bf16() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw")) return false;
  if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return false;
  return (a >> 5) & 1U;  // CPUID.(EAX=7, ECX=1):EAX[5] = AVX512_BF16
}

}  // namespace

void set_expert_kernel(ExpertKernel k) { g_kernel = k; }
ExpertKernel expert_kernel() { return g_kernel; }

ExpertKernel parse_expert_kernel(const std::string& s, const std::string& flag) {
  if (s == "auto") return ExpertKernel::kAuto;
  if (s == "torch") return ExpertKernel::kTorch;
  throw UserError(flag + ": unknown expert kernel '" + s + "' (use auto or torch)");
}

const char* expert_kernel_name(ExpertKernel k) { return k == ExpertKernel::kAuto ? "auto" : "torch"; }

bool cpu_has_avx512_bf16() {
  static const bool has = detect_avx512_bf16();
  return has;
}

bool small_m_kernel_applies(const torch::Tensor& x_MK, const torch::Tensor& w_NK) {
  return g_kernel == ExpertKernel::kAuto && x_MK.dim() == 2 && w_NK.dim() == 2 &&
         x_MK.size(0) <= kSmallMMaxRows && x_MK.scalar_type() == torch::kBFloat16 &&
         w_NK.scalar_type() == torch::kBFloat16 && x_MK.is_contiguous() && w_NK.is_contiguous() &&
         x_MK.size(1) == w_NK.size(1) && x_MK.device().is_cpu() && w_NK.device().is_cpu() &&
         !(torch::GradMode::is_enabled() && (x_MK.requires_grad() || w_NK.requires_grad())) &&
         cpu_has_avx512_bf16();
}

bool small_m_expert_applies(const torch::Tensor& x_MD, const torch::Tensor& gate_FD, const torch::Tensor& up_FD,
                            const torch::Tensor& down_DF) {
  // The down projection's input is the kernel's own bf16 h, so only its weight needs checking.
  return small_m_kernel_applies(x_MD, gate_FD) && small_m_kernel_applies(x_MD, up_FD) &&
         down_DF.scalar_type() == torch::kBFloat16 && down_DF.is_contiguous() &&
         !(torch::GradMode::is_enabled() && down_DF.requires_grad());
}

torch::Tensor small_m_linear_bf16(const torch::Tensor& x_MK, const torch::Tensor& w_NK) {
  TORCH_CHECK(cpu_has_avx512_bf16(), "small_m_linear_bf16: this CPU has no AVX512-BF16");
  const auto x = x_MK.contiguous(), w = w_NK.contiguous();
  TORCH_CHECK(x.scalar_type() == torch::kBFloat16 && w.scalar_type() == torch::kBFloat16 && x.dim() == 2 &&
                  w.dim() == 2 && x.size(1) == w.size(1),
              "small_m_linear_bf16: expects bf16 x [M, K] and w [N, K]");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  auto y_MN = torch::empty({M, N}, torch::kFloat32);
  if (M > 0 && N > 0) gemm(bf16_ptr(x), M, K, bf16_ptr(w), N, y_MN.data_ptr<float>());
  return y_MN;
}

torch::Tensor small_m_expert_bf16(const torch::Tensor& x_MD, const torch::Tensor& gate_FD,
                                  const torch::Tensor& up_FD, const torch::Tensor& down_DF) {
  const int64_t M = x_MD.size(0), F = gate_FD.size(0), D = gate_FD.size(1);
  TORCH_CHECK(up_FD.size(0) == F && down_DF.size(0) == D && down_DF.size(1) == F,
              "small_m_expert_bf16: expert shapes disagree");
  auto g_MF = small_m_linear_bf16(x_MD, gate_FD);
  auto u_MF = small_m_linear_bf16(x_MD, up_FD);
  // silu(g)·u and the bf16 rounding in one pass: torch would spend four dispatches per expert.
  auto h_MF = torch::empty({M, F}, torch::kBFloat16);
  const float* g = g_MF.data_ptr<float>();
  const float* u = u_MF.data_ptr<float>();
  auto* h = h_MF.data_ptr<c10::BFloat16>();
  for (int64_t i = 0; i < M * F; ++i) h[i] = c10::BFloat16(g[i] / (1.0F + std::exp(-g[i])) * u[i]);
  auto y_MD = small_m_linear_bf16(h_MF, down_DF);
  auto out_MD = torch::empty({M, D}, torch::kBFloat16);
  const float* y = y_MD.data_ptr<float>();
  auto* o = out_MD.data_ptr<c10::BFloat16>();
  for (int64_t i = 0; i < M * D; ++i) o[i] = c10::BFloat16(y[i]);
  return out_MD;
}

}  // namespace ecdlm::moe
