#include "ecdlm/kernels/norm_rope.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <cmath>

namespace ecdlm::kernels {
namespace {

bool eligible(const torch::Tensor& t) {
  return t.defined() && t.device().is_cpu() && (t.scalar_type() == torch::kFloat32 || t.scalar_type() == torch::kBFloat16) &&
         !(torch::GradMode::is_enabled() && t.requires_grad());
}

// A value as the dtype T holds it: bf16 rounds (nearest even), f32 is exact.
template <typename T>
inline float held(float v) {
  return static_cast<float>(static_cast<T>(v));
}

template <typename T>
void rms_norm_rows(const T* x, const T* w, T* y, int64_t rows, int64_t D, float eps) {
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * D;
      T* yr = y + r * D;
      float ss = 0.0F;
      for (int64_t d = 0; d < D; ++d) {
        const float v = static_cast<float>(xr[d]);
        ss += v * v;
      }
      const float inv = 1.0F / std::sqrt(ss / static_cast<float>(D) + eps);
      // normed is cast to T, then T * T (computed in f32, rounded to T) as torch does.
      for (int64_t d = 0; d < D; ++d)
        yr[d] = static_cast<T>(static_cast<float>(w[d]) * held<T>(static_cast<float>(xr[d]) * inv));
    }
  });
}

template <typename T>
void rope_rows(const T* x, const T* cos, const T* sin, T* y, int64_t BLH, int64_t L, int64_t H, int64_t hd, int64_t rd) {
  const int64_t half = rd / 2;
  at::parallel_for(0, BLH, 64, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {  // i = (b * L + l) * H + h over [B, L, H]; l picks the table row
      const int64_t l = (i / H) % L;
      const T* xr = x + i * hd;
      T* yr = y + i * hd;
      const T* c = cos + l * half;
      const T* s = sin + l * half;
      for (int64_t j = 0; j < half; ++j) {
        const float x1 = static_cast<float>(xr[j]), x2 = static_cast<float>(xr[j + half]);
        const float cj = static_cast<float>(c[j]), sj = static_cast<float>(s[j]);
        // Each torch op rounds to T: x1*cos, x2*sin, their difference; x2*cos, x1*sin, the sum.
        yr[j] = static_cast<T>(held<T>(x1 * cj) - held<T>(x2 * sj));
        yr[j + half] = static_cast<T>(held<T>(x2 * cj) + held<T>(x1 * sj));
      }
      for (int64_t j = rd; j < hd; ++j) yr[j] = xr[j];
    }
  });
}

}  // namespace

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  if (!eligible(x) || x.scalar_type() != torch::kBFloat16 || !eligible(w) || w.scalar_type() != x.scalar_type() ||
      x.dim() < 1 || w.dim() != 1 ||
      w.size(0) != x.size(-1) || x.numel() == 0)
    return {};
  const auto xc = x.contiguous(), wc = w.contiguous();
  auto y = torch::empty_like(xc);
  const int64_t D = x.size(-1), rows = x.numel() / D;
  rms_norm_rows(xc.data_ptr<c10::BFloat16>(), wc.data_ptr<c10::BFloat16>(), y.data_ptr<c10::BFloat16>(), rows, D,
                static_cast<float>(eps));
  return y;
}

torch::Tensor rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin, int64_t rd) {
  if (!eligible(x) || !eligible(cos) || !eligible(sin) || x.dim() != 4 || cos.scalar_type() != x.scalar_type() ||
      sin.scalar_type() != x.scalar_type() || rd <= 0 || rd % 2 || rd > x.size(3) || cos.numel() != x.size(1) * rd / 2 ||
      sin.numel() != cos.numel() || x.numel() == 0)
    return {};
  const auto xc = x.contiguous(), cc = cos.contiguous(), sc = sin.contiguous();
  auto y = torch::empty_like(xc);
  const int64_t L = x.size(1), H = x.size(2), hd = x.size(3), BLH = x.size(0) * L * H;
  if (x.scalar_type() == torch::kFloat32)
    rope_rows(xc.data_ptr<float>(), cc.data_ptr<float>(), sc.data_ptr<float>(), y.data_ptr<float>(), BLH, L, H, hd, rd);
  else
    rope_rows(xc.data_ptr<c10::BFloat16>(), cc.data_ptr<c10::BFloat16>(), sc.data_ptr<c10::BFloat16>(),
              y.data_ptr<c10::BFloat16>(), BLH, L, H, hd, rd);
  return y;
}

}  // namespace ecdlm::kernels
