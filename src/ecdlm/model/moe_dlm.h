// MoeDlm: the one model behind llada2_moe, LLaDA-MoE and ecdlm's own checkpoints.
// Module names equal checkpoint tensor names (llada2_moe layout), except stacked experts.
#pragma once
#include <torch/torch.h>

#include "ecdlm/model/attention.h"
#include "ecdlm/model/config.h"
#include "ecdlm/model/layers.h"
#include "ecdlm/moe/capacity.h"
#include "ecdlm/moe/moe_block.h"

namespace ecdlm {

struct ForwardOptions {
  torch::Tensor mask_ratio_B;   // f32 [B]: r for EC capacity k(r); default: #mask / L per row
  torch::Tensor capacity_B;     // int64 [B]: explicit EC capacity (overrides the schedule)
  int64_t block_length = 0;     // > 0: block-causal attention aligned to position 0
  int64_t pos_offset = 0;       // absolute position of input column 0
  bool reference = false;       // slow per-expert MoE loop (tests)
  bool skip_lm_head = false;    // return the final hidden states only (loss projects masked rows)
  int64_t logits_last_n = 0;    // > 0: the LM head runs on the last n positions only
  const moe::InferenceRouting* routing = nullptr;  // inference policy (null = the model's own)
  // Prefix cache: the input continues at position kv_cache->length() (pos_offset must be 0 or
  // equal to it); with kv_append the input's K/V are appended after the forward.
  KvCache* kv_cache = nullptr;
  bool kv_append = false;
  // With kv_append, > 0: append only the first n input positions (a finished block riding along
  // with the first forward of the next one); 0 appends them all.
  int64_t kv_append_n = 0;
};

struct ForwardResult {
  torch::Tensor logits_BLV;     // f32 [B, L, V] (undefined with skip_lm_head)
  torch::Tensor hidden_BLD;     // final-norm hidden states [B, L, D]
  torch::Tensor aux_loss;       // f32 scalar: sum over MoE layers (training), else 0
};

class DecoderLayerImpl : public torch::nn::Module {
 public:
  DecoderLayerImpl(const ModelConfig& cfg, int64_t layer);
  torch::Tensor forward(const torch::Tensor& x_BLD, const RopeTable& rope,
                        const torch::Tensor& mask_LS, const moe::MoeForwardArgs& moe_args,
                        const LayerKv* past = nullptr, LayerKv* present = nullptr);
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  Attention attention{nullptr};
  SwiGluMlp dense_mlp{nullptr};   // registered as "mlp" on dense layers
  moe::MoeBlock moe_mlp{nullptr}; // registered as "mlp" on MoE layers
};
TORCH_MODULE(DecoderLayer);

class BackboneImpl : public torch::nn::Module {
 public:
  explicit BackboneImpl(const ModelConfig& cfg);
  torch::nn::Embedding word_embeddings{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};
};
TORCH_MODULE(Backbone);

class MoeDlmImpl : public torch::nn::Module {
 public:
  explicit MoeDlmImpl(const ModelConfig& cfg);
  // input_ids_BL int64 [B, L].
  ForwardResult forward(const torch::Tensor& input_ids_BL, const ForwardOptions& opt = {});

  // EC capacity per sequence from the schedule and r_B.
  torch::Tensor capacity_for(const torch::Tensor& r_B, int64_t seq_len) const;
  std::vector<moe::MoeBlock> moe_blocks();
  std::vector<moe::RoutingStats> last_routing_stats();
  void update_expert_biases(double rate);  // loss-free balancing, once per optimizer step

  int64_t num_parameters() const;
  int64_t num_active_parameters() const;   // per token (k experts + shared + dense parts)
  // Forward FLOPs per token for a sequence of length L (matmuls only; attention included).
  // experts_per_token < 0: the config's num_experts_per_tok (EC: k = C * E / L on average).
  double forward_flops_per_token(int64_t seq_len, double experts_per_token = -1.0) const;

  const ModelConfig& config() const { return cfg_; }
  const moe::CapacitySchedule& schedule() const { return schedule_; }

  Backbone model{nullptr};
  LinearNoBias lm_head{nullptr};

 private:
  ModelConfig cfg_;
  moe::CapacitySchedule schedule_;
};
TORCH_MODULE(MoeDlm);

// The EC capacity schedule a config describes: moe::make_schedule of its MoeConfig.
moe::CapacitySchedule make_schedule(const ModelConfig& c);

// The inference routing a checkpoint asks for by default: block for dMoE checkpoints (mode
// "aggregate", with their core_threshold), else token.
moe::InferenceRouting default_routing(const ModelConfig& c);

// Forward matmul FLOPs per token of a model with config `c` on sequences of length L, with
// `experts_per_token` routed experts per token (< 0: c.num_experts_per_tok).
double forward_flops_per_token(const ModelConfig& c, int64_t seq_len, double experts_per_token = -1.0);

}  // namespace ecdlm
