#include "ecdlm/train/retrofit.h"

#include "ecdlm/util/error.h"
#include "ecdlm/util/strings.h"

namespace ecdlm {

ModelConfig retrofit_config(const ModelConfig& tc, const RetrofitParams& p) {
  if (tc.num_moe_layers() == 0) fail("", "--from", "the model has no MoE layers", "retrofit a MoE checkpoint");
  if (tc.router_type == RouterType::kExpertChoice)
    fail("", "--from", "the model already uses expert-choice routing", "retrofit a token-choice checkpoint");
  ModelConfig ec = tc;
  ec.router_type = RouterType::kExpertChoice;
  ec.moe_capacity_schedule = p.schedule;
  if (p.k > 0) ec.num_experts_per_tok = static_cast<int64_t>(p.k);
  ec.moe_capacity_k_min = p.k_min;
  ec.moe_capacity_k_max = p.k_max;
  ec.moe_capacity_factor = 0.0;
  ec.moe_aux_loss_coeff = 0.0;
  ec.moe_loss_free_bias_rate = 0.0;
  ec.moe_z_loss_coeff = p.z_loss_coeff;
  ec.moe_enable_scaling_factor = p.scaling_factor && tc.shared_expert_intermediate_size > 0;
  ec.validate("retrofit config");
  return ec;
}

int64_t set_trainable(MoeDlm& model, const std::string& which) {
  if (which != "all" && which != "router" && which != "router+experts")
    fail("", "--retrofit-train", "unknown value '" + which + "'", "use router, router+experts or all");
  int64_t n = 0;
  for (auto& kv : model->named_parameters()) {
    const auto& name = kv.key();
    bool is_router = ends_with(name, "mlp.gate.weight");
    bool is_expert = name.find("mlp.experts.") != std::string::npos;
    bool train = which == "all" || is_router || (which == "router+experts" && is_expert);
    kv.value().set_requires_grad(train);
    if (train) n += kv.value().numel();
  }
  return n;
}

}  // namespace ecdlm
