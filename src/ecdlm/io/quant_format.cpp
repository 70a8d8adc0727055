#include "ecdlm/io/quant_format.h"

#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "ecdlm/io/quant_search.h"
#include "ecdlm/util/error.h"

#pragma GCC diagnostic ignored "-Wuninitialized"  // _mm512_undefined_* inside GCC's intrinsics
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace ecdlm::io {
namespace {

float to_f16(float v) { return static_cast<float>(c10::Half(v)); }

constexpr int64_t kMaxGroup = 64;  // check_format's largest group

// Squared error of the group under (d, m) with codes re-chosen for them; fills q (quant_search.h).
double requantize(QuantKind kind, const float* v, int64_t G, float d, float m, int* q) {
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  return avx512 && G % 16 == 0 && G <= kMaxGroup ? detail::requantize_avx512(kind, v, G, d, m, q)
                                                 : detail::requantize_scalar(kind, v, G, d, m, q);
}

void check_format(QuantFormat f, const std::string& field) {
  if (f.group != 32 && f.group != 64) fail("", field, "group size " + std::to_string(f.group), "use 32 or 64");
}

int64_t qweight_cols(QuantFormat f, int64_t K) { return f.kind == QuantKind::kQ8 ? K : K / 2; }

QuantWeight quantize_impl(const torch::Tensor& w_NK, QuantFormat f, bool refine) {
  check_format(f, "quantize");
  if (w_NK.dim() != 2) fail("", "quantize", "weight must be 2-D [N, K], got " + std::to_string(w_NK.dim()) + "-D");
  const int64_t N = w_NK.size(0), K = w_NK.size(1), G = f.group;
  if (K < 1 || K % G != 0)
    fail("", "quantize", "K = " + std::to_string(K) + " is not a positive multiple of the group " + std::to_string(G),
         "pad the input dimension or use another group size");
  if (w_NK.scalar_type() != torch::kFloat32 && w_NK.scalar_type() != torch::kBFloat16)
    fail("", "quantize", "weight dtype must be f32 or bf16");
  const auto w = w_NK.to(torch::kCPU, torch::kFloat32).contiguous();
  QuantWeight out;
  out.format = f;
  out.N = N;
  out.K = K;
  out.qweight = torch::empty({N, qweight_cols(f, K)}, f.kind == QuantKind::kQ8 ? torch::kInt8 : torch::kUInt8);
  out.scales = torch::empty({N, K / G}, torch::kFloat16);
  if (f.kind == QuantKind::kQ4) out.mins = torch::empty({N, K / G}, torch::kFloat16);
  const float* wp = w.data_ptr<float>();
  auto* sp = reinterpret_cast<c10::Half*>(out.scales.data_ptr());
  auto* mp = out.mins.defined() ? reinterpret_cast<c10::Half*>(out.mins.data_ptr()) : nullptr;
  // Rows are independent: quantized in parallel (convert packs multi-GB checkpoints).
  at::parallel_for(0, N, 16, [&](int64_t n_begin, int64_t n_end) {
    std::vector<int> codes(static_cast<size_t>(K));
    for (int64_t n = n_begin; n < n_end; ++n) {
      const float* row = wp + n * K;
      for (int64_t g = 0; g < K / G; ++g) {
        float d = 0, m = 0;
        detail::quantize_group(f.kind, row + g * G, G, refine, codes.data() + g * G, &d, &m);
        sp[n * (K / G) + g] = c10::Half(d);
        if (mp) mp[n * (K / G) + g] = c10::Half(m);
      }
      if (f.kind == QuantKind::kQ8) {
        int8_t* q = out.qweight.data_ptr<int8_t>() + n * K;
        for (int64_t k = 0; k < K; ++k) q[k] = static_cast<int8_t>(codes[static_cast<size_t>(k)]);
      } else {
        uint8_t* q = out.qweight.data_ptr<uint8_t>() + n * (K / 2);
        for (int64_t k0 = 0; k0 < K; k0 += kQ4Chunk) {
          const int64_t half = std::min(kQ4Chunk, K - k0) / 2;
          for (int64_t i = 0; i < half; ++i)
            q[k0 / 2 + i] = static_cast<uint8_t>(codes[static_cast<size_t>(k0 + i)] |
                                                 (codes[static_cast<size_t>(k0 + half + i)] << 4));
        }
      }
    }
  });
  return out;
}

}  // namespace

namespace detail {

double requantize_scalar(QuantKind kind, const float* v, int64_t G, float d, float m, int* q) {
  double err = 0;
  for (int64_t i = 0; i < G; ++i) {
    int c = 0;
    float w = 0;
    if (d != 0.0F) {
      if (kind == QuantKind::kQ8) {
        c = static_cast<int>(std::clamp(detail::round_even(v[i] / d), -127.0F, 127.0F));
        w = d * static_cast<float>(c);
      } else if (kind == QuantKind::kQ4Sym) {
        c = static_cast<int>(std::clamp(detail::round_even(v[i] / d) + 8.0F, 0.0F, 15.0F));
        w = d * static_cast<float>(c - 8);
      } else {
        c = static_cast<int>(std::clamp(detail::round_even((v[i] - m) / d), 0.0F, 15.0F));
        w = d * static_cast<float>(c) + m;
      }
    } else {
      c = kind == QuantKind::kQ4Sym ? 8 : 0;
      w = kind == QuantKind::kQ4 ? m : 0.0F;
    }
    q[i] = c;
    err += static_cast<double>(v[i] - w) * static_cast<double>(v[i] - w);
  }
  return err;
}

// 16 weights at a time, each with the scalar version's float operations in its order (the
// function is compiled without FMA contraction); the squares are summed in index order as there.
__attribute__((target("avx512f"), optimize("fp-contract=off"))) double requantize_avx512(
    QuantKind kind, const float* v, int64_t G, float d, float m, int* q) {
  alignas(64) double sq[kMaxGroup];
  const __m512 vd = _mm512_set1_ps(d), vm = _mm512_set1_ps(m), magic = _mm512_set1_ps(12582912.0F);
  const __m512 lo = _mm512_set1_ps(kind == QuantKind::kQ8 ? -127.0F : 0.0F),
               hi = _mm512_set1_ps(kind == QuantKind::kQ8 ? 127.0F : 15.0F);
  for (int64_t i = 0; i < G; i += 16) {
    const __m512 x = _mm512_loadu_ps(v + i);
    __m512i c;
    __m512 w;
    if (d != 0.0F) {
      const __m512 t = _mm512_div_ps(kind == QuantKind::kQ4 ? _mm512_sub_ps(x, vm) : x, vd);
      __m512 r = _mm512_sub_ps(_mm512_add_ps(t, magic), magic);
      if (kind == QuantKind::kQ4Sym) r = _mm512_add_ps(r, _mm512_set1_ps(8.0F));
      c = _mm512_cvttps_epi32(_mm512_min_ps(_mm512_max_ps(r, lo), hi));
      if (kind == QuantKind::kQ8)
        w = _mm512_mul_ps(vd, _mm512_cvtepi32_ps(c));
      else if (kind == QuantKind::kQ4Sym)
        w = _mm512_mul_ps(vd, _mm512_cvtepi32_ps(_mm512_sub_epi32(c, _mm512_set1_epi32(8))));
      else
        w = _mm512_add_ps(_mm512_mul_ps(vd, _mm512_cvtepi32_ps(c)), vm);
    } else {
      c = _mm512_set1_epi32(kind == QuantKind::kQ4Sym ? 8 : 0);
      w = kind == QuantKind::kQ4 ? vm : _mm512_setzero_ps();
    }
    _mm512_storeu_si512(q + i, c);
    const __m512 e = _mm512_sub_ps(x, w);
    const __m512d e0 = _mm512_cvtps_pd(_mm512_castps512_ps256(e)),
                  e1 = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1)));
    _mm512_store_pd(sq + i, _mm512_mul_pd(e0, e0));
    _mm512_store_pd(sq + i + 8, _mm512_mul_pd(e1, e1));
  }
  double err = 0;
  for (int64_t i = 0; i < G; ++i) err += sq[i];
  return err;
}

float round_even(float x) {
  constexpr float kMagic = 12582912.0F;  // 1.5 · 2^23
  return (x + kMagic) - kMagic;
}

void quantize_group(QuantKind kind, const float* v, int64_t G, bool refine, int* q, float* d, float* m) {
  if (G < 1 || G > kMaxGroup) fail("", "quantize", "group size " + std::to_string(G), "use 32 or 64");
  float lo = v[0], hi = v[0], amax_signed = v[0];
  for (int64_t i = 0; i < G; ++i) {
    if (!std::isfinite(v[i])) fail("", "quantize", "a weight is not finite", "check the checkpoint");
    lo = std::min(lo, v[i]);
    hi = std::max(hi, v[i]);
    if (std::fabs(v[i]) > std::fabs(amax_signed)) amax_signed = v[i];
  }
  float bd = 0, bm = 0;
  if (kind == QuantKind::kQ8) {
    bd = to_f16(std::fabs(amax_signed) / 127.0F);
  } else if (kind == QuantKind::kQ4Sym) {
    bd = to_f16(amax_signed / -8.0F);  // the extreme value maps to code 0 (-8) exactly
  } else {
    bd = to_f16((hi - lo) / 15.0F);
    bm = to_f16(lo);
  }
  double best = requantize(kind, v, G, bd, bm, q);
  if (!refine || kind == QuantKind::kQ8 || bd == 0.0F) {
    *d = bd;
    *m = bm;
    return;
  }
  // Least-squares refit of the scale (and min) for the current codes, then re-chosen codes; kept
  // while the error falls (llama.cpp's K-quant search does the same with more candidates).
  int trial[kMaxGroup], cur[kMaxGroup];  // no heap per group: convert quantizes billions of weights
  std::copy_n(q, G, cur);
  for (int it = 0; it < 4; ++it) {
    double sq = 0, sqq = 0, sv = 0, svq = 0;
    for (int64_t i = 0; i < G; ++i) {
      const double c = kind == QuantKind::kQ4Sym ? cur[i] - 8 : cur[i];
      sq += c;
      sqq += c * c;
      sv += v[i];
      svq += v[i] * c;
    }
    float nd = 0, nm = 0;
    if (kind == QuantKind::kQ4Sym) {
      if (sqq == 0) break;
      nd = to_f16(static_cast<float>(svq / sqq));
    } else {
      const double det = static_cast<double>(G) * sqq - sq * sq;
      if (det == 0) break;
      nd = to_f16(static_cast<float>((static_cast<double>(G) * svq - sq * sv) / det));
      nm = to_f16(static_cast<float>((sqq * sv - sq * svq) / det));
    }
    if (nd == 0.0F || (kind == QuantKind::kQ4 && nd < 0.0F)) break;
    const double e = requantize(kind, v, G, nd, nm, trial);
    if (e >= best) break;
    best = e;
    bd = nd;
    bm = nm;
    std::copy_n(trial, G, cur);
    std::copy_n(trial, G, q);
  }
  *d = bd;
  *m = bm;
}

double relative_rms_error(const torch::Tensor& w_NK, QuantFormat f, bool refine) {
  const auto deq = dequantize(quantize_impl(w_NK, f, refine)).to(torch::kFloat64);
  const auto w = w_NK.to(torch::kFloat64);
  return ((deq - w).norm() / w.norm()).item<double>();
}

}  // namespace detail

std::string quant_format_name(QuantFormat f) {
  const char* k = f.kind == QuantKind::kQ8 ? "q8" : f.kind == QuantKind::kQ4 ? "q4" : "q4s";
  return std::string(k) + "_g" + std::to_string(f.group);
}

QuantFormat parse_quant_format(const std::string& name, const std::string& field) {
  for (auto kind : {QuantKind::kQ8, QuantKind::kQ4, QuantKind::kQ4Sym})
    for (int64_t g : {32, 64})
      if (quant_format_name({kind, g}) == name) return {kind, g};
  fail("", field, "unknown quantized format '" + name + "'", "use q8_g32, q8_g64, q4_g32, q4_g64, q4s_g32 or q4s_g64");
}

int64_t quant_bytes(QuantFormat f, int64_t N, int64_t K) {
  const int64_t groups = N * (K / f.group);
  return N * qweight_cols(f, K) + groups * 2 * (f.kind == QuantKind::kQ4 ? 2 : 1);
}

QuantWeight quantize(const torch::Tensor& w_NK, QuantFormat f) { return quantize_impl(w_NK, f, true); }

torch::Tensor dequantize(const QuantWeight& q) { return dequantize_rows(q, 0, q.N); }

torch::Tensor dequantize_rows(const QuantWeight& q, int64_t n0, int64_t n1) {
  TORCH_CHECK(0 <= n0 && n0 <= n1 && n1 <= q.N, "dequantize_rows: bad row range");
  const int64_t K = q.K, G = q.format.group, KG = K / G;
  auto out = torch::empty({n1 - n0, K}, torch::kFloat32);
  float* o = out.data_ptr<float>();
  const auto* sp = reinterpret_cast<const c10::Half*>(q.scales.data_ptr());
  const auto* mp = q.mins.defined() ? reinterpret_cast<const c10::Half*>(q.mins.data_ptr()) : nullptr;
  for (int64_t n = n0; n < n1; ++n) {
    float* row = o + (n - n0) * K;
    if (q.format.kind == QuantKind::kQ8) {
      const int8_t* c = q.qweight.data_ptr<int8_t>() + n * K;
      for (int64_t k = 0; k < K; ++k) row[k] = static_cast<float>(c[k]);
    } else {
      const uint8_t* c = q.qweight.data_ptr<uint8_t>() + n * (K / 2);
      const float z = q.format.kind == QuantKind::kQ4Sym ? 8.0F : 0.0F;
      for (int64_t k0 = 0; k0 < K; k0 += kQ4Chunk) {
        const int64_t half = std::min(kQ4Chunk, K - k0) / 2;
        for (int64_t i = 0; i < half; ++i) {
          row[k0 + i] = static_cast<float>(c[k0 / 2 + i] & 15) - z;
          row[k0 + half + i] = static_cast<float>(c[k0 / 2 + i] >> 4) - z;
        }
      }
    }
    for (int64_t g = 0; g < KG; ++g) {
      const float d = sp[n * KG + g], m = mp ? static_cast<float>(mp[n * KG + g]) : 0.0F;
      for (int64_t k = g * G; k < (g + 1) * G; ++k) row[k] = row[k] * d + m;
    }
  }
  return out;
}

QuantWeight make_quant_weight(QuantFormat f, torch::Tensor qweight, torch::Tensor scales, torch::Tensor mins,
                              const std::string& name) {
  check_format(f, name);
  const auto plain = [](const torch::Tensor& t) { return t.defined() && t.dim() == 2 && t.device().is_cpu() && t.is_contiguous(); };
  const auto shape = [](const torch::Tensor& t) { return "[" + std::to_string(t.size(0)) + ", " + std::to_string(t.size(1)) + "]"; };
  const std::string fmt = quant_format_name(f);
  if (!plain(qweight)) fail("", name + ".qweight", "must be a contiguous 2-D CPU tensor");
  const auto want_q = f.kind == QuantKind::kQ8 ? torch::kInt8 : torch::kUInt8;
  if (qweight.scalar_type() != want_q)
    fail("", name + ".qweight", std::string("dtype must be ") + (want_q == torch::kInt8 ? "int8" : "uint8") + " for " + fmt);
  const int64_t N = qweight.size(0), K = f.kind == QuantKind::kQ8 ? qweight.size(1) : 2 * qweight.size(1);
  if (K < 1 || K % f.group != 0)
    fail("", name + ".qweight", "input dimension " + std::to_string(K) + " is not a positive multiple of the group");
  const auto check_side = [&](const torch::Tensor& t, const std::string& field) {
    if (!plain(t) || t.scalar_type() != torch::kFloat16)
      fail("", name + field, "must be a contiguous 2-D f16 CPU tensor for " + fmt);
    if (t.size(0) != N || t.size(1) != K / f.group)
      fail("", name + field, "shape " + shape(t) + ", expected [" + std::to_string(N) + ", " + std::to_string(K / f.group) + "]");
  };
  check_side(scales, ".scales");
  if (f.kind == QuantKind::kQ4) check_side(mins, ".mins");
  else if (mins.defined()) fail("", name + ".mins", fmt + " has no minimums");
  QuantWeight q;
  q.format = f;
  q.N = N;
  q.K = K;
  q.qweight = std::move(qweight);
  q.scales = std::move(scales);
  q.mins = std::move(mins);
  return q;
}

}  // namespace ecdlm::io
