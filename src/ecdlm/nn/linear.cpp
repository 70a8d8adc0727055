#include "ecdlm/nn/linear.h"

#include "ecdlm/kernels/quant.h"
#include "ecdlm/kernels/small_m.h"
#include "ecdlm/nn/init.h"

namespace ecdlm {

LinearNoBiasImpl::LinearNoBiasImpl(int64_t in, int64_t out) {
  weight = register_parameter("weight", torch::empty({out, in}));
  if (weight_init_enabled()) torch::nn::init::normal_(weight, 0.0, 0.02);
}

torch::Tensor LinearNoBiasImpl::forward(const torch::Tensor& x) {
  if (!qw_) return kernels::linear(x, weight);
  return quant_forward(x, *qw_, x.scalar_type());
}

void LinearNoBiasImpl::bind_quantized(io::QuantWeight q) {
  TORCH_CHECK(q.K == weight.size(1) && q.N == weight.size(0), "bind_quantized: weight is ", weight.sizes(),
              ", the quantized one [", q.N, ", ", q.K, "]");
  torch::NoGradGuard ng;
  weight.set_data(torch::empty({0, weight.size(1)}, weight.options()));
  weight.set_requires_grad(false);
  qw_ = std::make_shared<const io::QuantWeight>(std::move(q));
}

int64_t LinearNoBiasImpl::weight_bytes() const {
  return qw_ ? qw_->bytes() : weight.numel() * static_cast<int64_t>(weight.element_size());
}

torch::Tensor quant_forward(const torch::Tensor& x, const io::QuantWeight& w, torch::ScalarType out) {
  auto sizes = x.sizes().vec();
  auto x_MK = x.reshape({-1, w.K});
  if (x_MK.scalar_type() != torch::kFloat32 && x_MK.scalar_type() != torch::kBFloat16) x_MK = x_MK.to(torch::kFloat32);
  auto y_MN = kernels::quant_linear(x_MK.contiguous(), w);
  sizes.back() = w.N;
  return y_MN.to(out).view(sizes);
}

SwiGluMlpImpl::SwiGluMlpImpl(int64_t hidden, int64_t inter) {
  gate_proj = register_module("gate_proj", LinearNoBias(hidden, inter));
  up_proj = register_module("up_proj", LinearNoBias(hidden, inter));
  down_proj = register_module("down_proj", LinearNoBias(inter, hidden));
}

torch::Tensor SwiGluMlpImpl::forward(const torch::Tensor& x) {
  const auto dt = x.scalar_type();
  if (gate_proj->quantized() && up_proj->quantized() && down_proj->quantized() && x.dim() >= 1 &&
      (dt == torch::kBFloat16 || dt == torch::kFloat32)) {
    // One parallel region, x quantized once for gate and up (kernels/quant.h quant_swiglu).
    const auto x_MD = x.reshape({-1, x.size(-1)});
    return kernels::quant_swiglu(x_MD, gate_proj->quant(), up_proj->quant(), down_proj->quant(), dt).view(x.sizes());
  }
  if (gate_proj->quantized() || up_proj->quantized() || down_proj->quantized()) {
    // h stays f32 between the products (one rounding at the end, as the small-M kernel).
    auto g = gate_proj->quantized() ? quant_forward(x, gate_proj->quant(), torch::kFloat32) : gate_proj(x).to(torch::kFloat32);
    auto u = up_proj->quantized() ? quant_forward(x, up_proj->quant(), torch::kFloat32) : up_proj(x).to(torch::kFloat32);
    auto h = torch::silu(g) * u;
    if (!down_proj->quantized()) h = h.to(x.scalar_type());
    return down_proj->quantized() ? quant_forward(h, down_proj->quant(), x.scalar_type()) : down_proj(h);
  }
  return kernels::swiglu(x, gate_proj->weight, up_proj->weight, down_proj->weight);
}

}  // namespace ecdlm
