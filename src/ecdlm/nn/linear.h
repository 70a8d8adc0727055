// Bias-free linear and SwiGLU modules: model/ builds attention projections and dense FFN layers
// from them, moe/ its shared expert. Registered under the checkpoint's tensor names.
#pragma once
#include <torch/torch.h>

#include <memory>

#include "ecdlm/io/quant_format.h"

namespace ecdlm {

// Bias-free linear stored as `<name>.weight` [out, in].
class LinearNoBiasImpl : public torch::nn::Module {
 public:
  LinearNoBiasImpl(int64_t in, int64_t out);
  // Few-row bf16 inference (a cached decoding step) takes the small-M kernel (kernels/small_m.h).
  torch::Tensor forward(const torch::Tensor& x);
  // Inference only: a quantized weight (io/quant_format.h, usually views of a mapped file)
  // replaces `weight`, which shrinks to [0, in]; forward then runs kernels/quant.h's products
  // (int8 kernels at few rows, dequantized tiles + GEMM at many) and returns x's dtype.
  void bind_quantized(io::QuantWeight q);
  bool quantized() const { return qw_ != nullptr; }
  const io::QuantWeight& quant() const { return *qw_; }
  // Bytes a forward streams: the packed weight when quantized, else `weight`.
  int64_t weight_bytes() const;
  torch::Tensor weight;

 private:
  std::shared_ptr<const io::QuantWeight> qw_;
};
TORCH_MODULE(LinearNoBias);

// x [..., K] through a quantized weight [N, K] -> [..., N] in `out` (f32 accumulation).
torch::Tensor quant_forward(const torch::Tensor& x, const io::QuantWeight& w, torch::ScalarType out);

// SwiGLU: down(silu(gate(x)) * up(x)). Dense FFN layers and the shared expert.
class SwiGluMlpImpl : public torch::nn::Module {
 public:
  SwiGluMlpImpl(int64_t hidden, int64_t inter);
  torch::Tensor forward(const torch::Tensor& x);
  LinearNoBias gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(SwiGluMlp);

}  // namespace ecdlm
