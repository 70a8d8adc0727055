// Expert capacity as an explicit input: k(r) from the realized mask ratio r (ec-dlm.md §3),
// then C = max(floor(L * k / E), 1) per sequence.
#pragma once
#include <torch/torch.h>

#include <string>

#include "ecdlm/moe/moe_config.h"

namespace ecdlm::moe {

enum class Schedule : int {
  kStatic = 0,
  kLinear = 1,
  kLinearReverse = 2,
  kCosine = 3,
  kCosineReverse = 4,
  kGaussian = 5,
  kGaussianReverse = 6,
};

Schedule parse_schedule(const std::string& name);  // throws UserError listing the valid names
std::string schedule_name(Schedule s);

class CapacitySchedule {
 public:
  // Static: k_min = k_max = k. Others interpolate between k_min and k_max.
  CapacitySchedule(Schedule s, double k_static, double k_min, double k_max, double sigma = 0.22);
  static CapacitySchedule make_static(double k) { return {Schedule::kStatic, k, k, k}; }

  // s(r) in [0, 1], float32 arithmetic as the reference code.
  float shape(float r) const;
  // k(r) = clamp(rint(k_min + (k_max - k_min) * s(r)), k_min, k_max); rint = banker's rounding.
  // Static schedules return k unrounded.
  double k_for(float r) const;
  // Per-sequence capacity C_B = max(floor(L * k(r_b) / E), 1), capped at L. r_B: f32 [B].
  torch::Tensor capacity(const torch::Tensor& r_B, int64_t seq_len, int64_t num_experts) const;
  int64_t static_capacity(int64_t seq_len, int64_t num_experts) const;

  // E[k] over the realized-r distribution of training (r = m/L, P(1/L) = 2/(L+1), else 1/(L+1)).
  double expected_k(int64_t seq_len) const;

  Schedule schedule() const { return s_; }
  double k_min() const { return k_min_; }
  double k_max() const { return k_max_; }

 private:
  Schedule s_;
  double k_static_, k_min_, k_max_, sigma_;
};

// The EC capacity schedule a config describes (k_min / k_max of 0 mean num_experts_per_tok).
CapacitySchedule make_schedule(const MoeConfig& c);

}  // namespace ecdlm::moe
