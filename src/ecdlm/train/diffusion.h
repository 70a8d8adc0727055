// The masked-diffusion training objective (ec-dlm.md §1): forward noising with the realized mask
// ratio r, and the 1/r-weighted masked cross-entropy over all B*L tokens.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "ecdlm/model/moe_dlm.h"

namespace ecdlm {

struct NoisedBatch {
  torch::Tensor x_t_BL;      // int64 [B, L]: masked positions hold mask_id
  torch::Tensor masked_BL;   // bool [B, L]
  torch::Tensor r_B;         // f32 [B]: realized mask ratio (#masked / L, >= 1/L)
};

// t_b ~ U[0,1) per sequence, each position masked with probability t_b, at least one mask per
// row. Fully determined by `seed` (callers derive it from (run seed, step, micro-batch)).
// t_min/t_max narrow t to U[t_min, t_max) (the dMoE fine-tune uses [0.3, 0.8)).
NoisedBatch noise_batch(const torch::Tensor& x0_BL, int64_t mask_id, uint64_t seed, double t_min = 0.0,
                        double t_max = 1.0);
// Deterministic mixing of several integers into one seed (splitmix64).
uint64_t mix_seed(uint64_t a, uint64_t b, uint64_t c = 0);

struct DiffusionLoss {
  torch::Tensor loss;         // f32 scalar: (1/(B*L)) sum_b w_b sum_i masked * CE (w = 1/r or 1)
  torch::Tensor seq_loss_B;   // f32 [B] (detached): per-sequence (1/L) * (1/r_b) * sum_i masked*CE
  torch::Tensor logits_MV;    // f32 [M, V]: the masked rows' logits (a distillation term reuses them)
  torch::Tensor rows_M;       // int64 [M]: those rows' flat indices into B*L
  int64_t masked_tokens = 0;
};

// Flat indices (into B*L, ascending) of the masked positions: int64 [M].
torch::Tensor masked_rows(const torch::Tensor& masked_BL);
// The LM head on those rows only (cheaper than full logits), in f32: [M, V].
torch::Tensor masked_logits(MoeDlm& model, const torch::Tensor& hidden_BLD, const torch::Tensor& rows_M);

// Projects only the masked rows through the LM head (cheaper than full logits).
// inverse_r = false drops the 1/r weight (the "stable training" variant). per_masked_token: the
// loss is the plain mean CE over masked tokens (dMoE's fine-tune), ignoring inverse_r.
DiffusionLoss diffusion_loss(MoeDlm& model, const torch::Tensor& hidden_BLD,
                             const torch::Tensor& x0_BL, const NoisedBatch& nb, bool inverse_r,
                             bool per_masked_token = false);

// Self-distillation term: T^2 * mean over rows of KL(softmax(teacher/T) || softmax(student/T)),
// full vocabulary, f32. Gradients flow into the student logits only.
torch::Tensor distill_kl(const torch::Tensor& teacher_logits_MV, const torch::Tensor& student_logits_MV,
                         double temperature = 1.0);

// Per-mask-ratio-bin accumulator: bin loss = sum of sequence losses / #sequences in the bin.
class BinnedLoss {
 public:
  explicit BinnedLoss(int64_t bins = 4) : sum_(static_cast<size_t>(bins), 0.0), count_(sum_.size(), 0) {}
  void add(const torch::Tensor& r_B, const torch::Tensor& seq_loss_B);
  int64_t bins() const { return static_cast<int64_t>(sum_.size()); }
  double mean(int64_t bin) const { return count_[bin] ? sum_[bin] / count_[bin] : 0.0; }
  int64_t count(int64_t bin) const { return count_[bin]; }
  double lo(int64_t bin) const { return static_cast<double>(bin) / bins(); }
  double hi(int64_t bin) const { return static_cast<double>(bin + 1) / bins(); }

 private:
  std::vector<double> sum_;
  std::vector<int64_t> count_;
};

}  // namespace ecdlm
