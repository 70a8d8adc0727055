#include "ecdlm/model/layers.h"

#include <cmath>

#include "ecdlm/kernels/norm_rope.h"
#include "ecdlm/model/init.h"
#include "ecdlm/util/strings.h"

namespace ecdlm {
namespace idx = torch::indexing;

ParamInit param_init(const std::string& name, int64_t num_hidden_layers) {
  if (ends_with(name, "norm.weight")) return {true, 0.0};
  const bool out = ends_with(name, "attention.dense.weight") || ends_with(name, "o_proj.weight") ||
                   ends_with(name, "down_proj.weight") || ends_with(name, "experts.down_proj");
  return {false, out ? 0.02 / std::sqrt(2.0 * static_cast<double>(num_hidden_layers)) : 0.02};
}

torch::Tensor popularity_bias(int64_t num_experts, double a, c10::optional<at::Generator> gen) {
  auto rank_E = at::randperm(num_experts, gen, torch::TensorOptions().dtype(torch::kInt64)).to(torch::kFloat32);
  return -a * torch::log1p(rank_E);
}

RMSNormImpl::RMSNormImpl(int64_t dim, double eps) : eps_(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  if (auto y = kernels::rms_norm(x, weight, eps_); y.defined()) return y;
  auto x32 = to_f32_or_wider(x);
  auto normed = (x32 * torch::rsqrt(x32.pow(2).mean(-1, true) + eps_)).to(x.scalar_type());
  return weight * normed;
}

RopeTable rope_table(const torch::Tensor& pos_L, int64_t rd, double theta, torch::ScalarType dtype) {
  RopeTable t;
  t.rotary_dim = rd;
  if (rd == 0) return t;
  const auto half = rd / 2;
  auto inv_freq = 1.0 / torch::pow(torch::tensor(theta, torch::kFloat32),
                                   torch::arange(0, rd, 2, torch::kFloat32) / static_cast<double>(rd));
  auto freqs_LH = pos_L.to(torch::kFloat32).unsqueeze(1) * inv_freq.unsqueeze(0);
  t.cos = freqs_LH.cos().to(dtype).view({1, -1, 1, half});
  t.sin = freqs_LH.sin().to(dtype).view({1, -1, 1, half});
  return t;
}

torch::Tensor apply_rope(const torch::Tensor& x_BLHd, const RopeTable& rope) {
  const auto rd = rope.rotary_dim;
  if (rd == 0) return x_BLHd;
  if (auto y = kernels::rope(x_BLHd, rope.cos, rope.sin, rd); y.defined()) return y;
  const auto half = rd / 2;
  auto x1 = x_BLHd.index({"...", idx::Slice(0, half)});
  auto x2 = x_BLHd.index({"...", idx::Slice(half, rd)});
  auto rot = torch::cat({x1 * rope.cos - x2 * rope.sin, x2 * rope.cos + x1 * rope.sin}, -1);
  if (rd == x_BLHd.size(-1)) return rot;
  return torch::cat({rot, x_BLHd.index({"...", idx::Slice(rd, idx::None)})}, -1);
}

}  // namespace ecdlm
