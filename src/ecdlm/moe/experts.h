// Routed experts with stacked weights, so one expert is one contiguous slice:
// gate_proj / up_proj [E, F, D], down_proj [E, D, F] (the "veomni" stacked checkpoint layout).
#pragma once
#include <torch/torch.h>

#include <vector>

#include "ecdlm/io/quant_format.h"
#include "ecdlm/moe/moe.h"

namespace ecdlm::moe {

class ExpertsImpl : public torch::nn::Module {
 public:
  ExpertsImpl(int64_t num_experts, int64_t hidden, int64_t inter);
  // All experts at once over fixed-size slots: x_END [E, N, D] -> [E, N, D] (one bmm per matrix;
  // one GEMM chain per expert once bound per expert).
  torch::Tensor forward_slots(const torch::Tensor& x_END);
  // One expert: x_ND [N, D] -> [N, D].
  torch::Tensor forward_one(int64_t e, const torch::Tensor& x_ND);
  // Every expert on its own rows: x_PD holds counts_E[e] rows for each expert e in order ->
  // [P, D]. At inference the small-M kernel runs all of them in one parallel region.
  torch::Tensor forward_sorted(const torch::Tensor& x_PD, const std::vector<int64_t>& counts_E);
  int64_t num_experts() const { return num_experts_; }

  // Inference only: per-expert weights (zero-copy views into a mapped checkpoint, or one
  // converted copy each) replace the stacked parameters, which shrink to [0, ...]. Each matrix
  // of an expert stays one contiguous slice, so an expert never routed to is never read.
  void bind_per_expert(std::vector<torch::Tensor> gate_FD, std::vector<torch::Tensor> up_FD,
                       std::vector<torch::Tensor> down_DF);
  // Inference only: quantized per-expert weights (views of a mapped file, one contiguous slice
  // per expert and matrix); the stacked parameters shrink to [0, ...] and every expert product
  // runs through kernels/quant.h.
  void bind_quantized(std::vector<io::QuantWeight> gate_FD, std::vector<io::QuantWeight> up_FD,
                      std::vector<io::QuantWeight> down_DF);
  bool quantized() const { return !gate_q_.empty(); }
  // Expert e's packed matrices (proj 0 gate, 1 up, 2 down); requires quantized().
  const io::QuantWeight& quant_w(int proj, int64_t e) const {
    const auto& v = proj == 0 ? gate_q_ : proj == 1 ? up_q_ : down_q_;
    return v.at(static_cast<size_t>(e));
  }
  bool per_expert_bound() const { return !gate_e_.empty() || quantized(); }
  // Expert e's matrices: gate / up [F, D], down [D, F] (views; stacked or bound).
  torch::Tensor gate_w(int64_t e) const { return gate_e_.empty() ? gate_proj[e] : gate_e_[size_t(e)]; }
  torch::Tensor up_w(int64_t e) const { return up_e_.empty() ? up_proj[e] : up_e_[size_t(e)]; }
  torch::Tensor down_w(int64_t e) const { return down_e_.empty() ? down_proj[e] : down_e_[size_t(e)]; }
  int64_t bytes_per_expert() const;
  // Experts computed since the last reset_touched(): the routed weights a run actually read.
  int64_t num_touched() const;
  void reset_touched();

  torch::Tensor gate_proj, up_proj, down_proj;

 private:
  int64_t num_experts_;
  std::vector<torch::Tensor> gate_e_, up_e_, down_e_;
  std::vector<io::QuantWeight> gate_q_, up_q_, down_q_;
  std::vector<uint8_t> touched_E_;
};
TORCH_MODULE(Experts);

// Dispatch: gather slot inputs. x_TD [T, D], token_EN int64 [E, N] -> [E, N, D].
torch::Tensor dispatch_slots(const torch::Tensor& x_TD, const torch::Tensor& token_EN);
// Combine: y_TD f32 [T, D] = sum over slots of gate * y (deterministic index_add).
torch::Tensor combine_slots(const torch::Tensor& y_END, const torch::Tensor& gate_EN,
                            const torch::Tensor& token_EN, int64_t T);
// Dropless token-major execution: pairs sorted by expert, one GEMM per non-empty expert.
torch::Tensor run_token_major(const torch::Tensor& x_TD, const torch::Tensor& idx_TK,
                              const torch::Tensor& gate_TK, Experts& experts);
// Any plan through the fast path (bmm for expert-major, grouped GEMM for token-major): f32 [T, D].
torch::Tensor run_plan(const torch::Tensor& x_TD, const RoutingPlan& plan, Experts& experts);
// Slow reference: for each expert, gather its pairs, run it alone, weight, add. f32 [T, D].
torch::Tensor run_plan_reference(const torch::Tensor& x_TD, const RoutingPlan& plan,
                                 Experts& experts);

}  // namespace ecdlm::moe
