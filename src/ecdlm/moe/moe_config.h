// What one MoE layer needs to be built and routed: shapes, router, experts and capacity policy.
// model/ fills it from ModelConfig (moe_config_from, model/config.h); tests and benchmarks of the
// MoE unit set it directly. Defaults equal ModelConfig's.
#pragma once
#include <cstdint>
#include <string>

namespace ecdlm::moe {

enum class RouterType : int { kTokenChoice = 0, kExpertChoice = 1 };
enum class ScoreFn : int { kSoftmax = 0, kSigmoid = 1 };

struct MoeConfig {
  int64_t hidden_size = 256;                      // D
  int64_t num_experts = 32;                       // E
  int64_t moe_intermediate_size = 128;            // F of each routed expert
  int64_t shared_expert_intermediate_size = 128;  // 0 = no shared expert
  RouterType router_type = RouterType::kTokenChoice;
  int64_t num_experts_per_tok = 2;                // TC top-k; EC average experts per token (capacity k)
  double z_loss_coeff = 1e-3;                     // both routers (training)

  // Token choice.
  ScoreFn score_function = ScoreFn::kSoftmax;
  int64_t n_group = 1;                            // group-limited routing (DeepSeek/LLaDA2)
  int64_t topk_group = 1;
  bool norm_topk_prob = true;
  double routed_scaling_factor = 1.0;             // gate scale (LLaDA2; or the TC norm-matching factor)
  bool enable_expert_bias = false;                // the gate holds the selection-only expert_bias [E]
  bool expert_bias_in_gate = false;               // LLaDA-MoE quirk: the bias also changes the weights
  double capacity_factor = 0.0;                   // 0 = dropless
  double aux_loss_coeff = 0.0;                    // Switch load-balancing loss

  // Expert choice: phi(n) norm matching against the shared expert, and the capacity schedule k(r)
  // (make_schedule, capacity.h).
  bool enable_scaling_factor = true;
  std::string capacity_schedule = "static";
  double capacity_k_min = 0.0;                    // 0 = num_experts_per_tok
  double capacity_k_max = 0.0;
  double capacity_gaussian_sigma = 0.22;
};

}  // namespace ecdlm::moe
