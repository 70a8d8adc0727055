#include "ecdlm/model/moe_dlm.h"

#include <cmath>

#include "ecdlm/model/init.h"
#include "ecdlm/util/profile.h"

namespace ecdlm {

DecoderLayerImpl::DecoderLayerImpl(const ModelConfig& c, int64_t layer) {
  input_layernorm = register_module("input_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
  attention = register_module("attention", Attention(c));
  post_attention_layernorm =
      register_module("post_attention_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
  if (c.is_moe_layer(layer)) {
    moe_mlp = register_module("mlp", moe::MoeBlock(moe_config_from(c)));
  } else {
    dense_mlp = register_module("mlp", SwiGluMlp(c.hidden_size, c.intermediate_size));
  }
}

torch::Tensor DecoderLayerImpl::forward(const torch::Tensor& x_BLD, const RopeTable& rope,
                                        const torch::Tensor& mask_LS,
                                        const moe::MoeForwardArgs& moe_args, const LayerKv* past,
                                        LayerKv* present) {
  auto h = x_BLD + attention->forward(input_layernorm(x_BLD), rope, mask_LS, past, present);
  auto n = post_attention_layernorm(h);
  if (!moe_mlp.is_empty()) return h + moe_mlp(n, moe_args);
  prof::Scope ps(prof::kDense);
  return h + dense_mlp(n);
}

BackboneImpl::BackboneImpl(const ModelConfig& c) {
  auto emb = torch::nn::EmbeddingOptions(c.vocab_size, c.hidden_size);
  // torch's Embedding always initializes unless handed a weight; an empty one stays untouched.
  if (!weight_init_enabled()) emb._weight(torch::empty({c.vocab_size, c.hidden_size}));
  word_embeddings = register_module("word_embeddings", torch::nn::Embedding(emb));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) layers->push_back(DecoderLayer(c, i));
  norm = register_module("norm", RMSNorm(c.hidden_size, c.rms_norm_eps));
}

moe::CapacitySchedule make_schedule(const ModelConfig& c) { return moe::make_schedule(moe_config_from(c)); }

moe::InferenceRouting default_routing(const ModelConfig& c) {
  moe::InferenceRouting r;
  if (c.dmoe_mode == "aggregate") {
    r.policy = moe::RoutingPolicy::kBlock;
    if (c.dmoe_core_threshold > 0) r.block_top_p = c.dmoe_core_threshold;
  }
  return r;
}

MoeDlmImpl::MoeDlmImpl(const ModelConfig& c) : cfg_(c), schedule_(make_schedule(c)) {
  model = register_module("model", Backbone(c));
  lm_head = register_module("lm_head", LinearNoBias(c.hidden_size, c.vocab_size));
  if (!weight_init_enabled()) return;
  // Megatron-style init: N(0, 0.02), output projections scaled by 1/sqrt(2 * layers).
  torch::NoGradGuard ng;
  model->word_embeddings->weight.normal_(0.0, 0.02);
  const double out_std = 0.02 / std::sqrt(2.0 * static_cast<double>(c.num_hidden_layers));
  for (auto& m : model->layers->children()) {
    auto layer = std::dynamic_pointer_cast<DecoderLayerImpl>(m);
    layer->attention->dense->weight.normal_(0.0, out_std);
    if (!layer->dense_mlp.is_empty()) layer->dense_mlp->down_proj->weight.normal_(0.0, out_std);
    if (!layer->moe_mlp.is_empty()) {
      layer->moe_mlp->experts->down_proj.normal_(0.0, out_std);
      if (!layer->moe_mlp->shared_experts.is_empty())
        layer->moe_mlp->shared_experts->down_proj->weight.normal_(0.0, out_std);
    }
  }
}

torch::Tensor MoeDlmImpl::capacity_for(const torch::Tensor& r_B, int64_t L) const {
  return schedule_.capacity(r_B, L, cfg_.num_experts);
}

ForwardResult MoeDlmImpl::forward(const torch::Tensor& ids_BL, const ForwardOptions& opt) {
  const auto B = ids_BL.size(0), L = ids_BL.size(1);
  moe::MoeForwardArgs margs;
  margs.reference = opt.reference;
  if (cfg_.router_type == RouterType::kExpertChoice && cfg_.num_moe_layers() > 0) {
    if (opt.capacity_B.defined()) {
      margs.capacity_B = opt.capacity_B;
    } else {
      auto r_B = opt.mask_ratio_B.defined()
                     ? opt.mask_ratio_B
                     : (ids_BL == cfg_.mask_token_id).to(torch::kFloat32).mean(1);
      margs.capacity_B = capacity_for(r_B, L);
    }
  }
  margs.routing = opt.routing;
  KvCache* kv = opt.kv_cache;
  const int64_t cached = kv ? kv->length() : 0;
  if (kv && opt.pos_offset != 0 && opt.pos_offset != cached)
    throw std::invalid_argument("forward: pos_offset " + std::to_string(opt.pos_offset) +
                                " differs from the KV cache length " + std::to_string(cached));
  if (opt.kv_append_n < 0 || opt.kv_append_n > L)
    throw std::invalid_argument("forward: kv_append_n " + std::to_string(opt.kv_append_n) + " outside [0, " +
                                std::to_string(L) + "]");
  const int64_t pos0 = kv ? cached : opt.pos_offset;
  auto pos_L = torch::arange(pos0, pos0 + L, torch::kInt64);
  torch::Tensor mask_LS;
  if (opt.block_length > 0) mask_LS = block_causal_mask(pos0, L, cached + L, opt.block_length);
  if (kv && kv->layers.empty()) kv->layers.resize(static_cast<size_t>(cfg_.num_hidden_layers));
  auto x = model->word_embeddings(ids_BL);
  const auto rope = rope_table(pos_L, cfg_.rotary_dim(), cfg_.rope_theta, x.scalar_type());
  auto aux = torch::zeros({}, torch::kFloat32);
  int64_t li = 0;
  for (auto& m : model->layers->children()) {
    auto layer = std::dynamic_pointer_cast<DecoderLayerImpl>(m);
    LayerKv present;
    const LayerKv* past = kv ? &kv->layers[static_cast<size_t>(li)] : nullptr;
    x = layer->forward(x, rope, mask_LS, margs, past, kv ? &present : nullptr);
    if (kv && opt.kv_append) {
      auto& c = kv->layers[static_cast<size_t>(li)];
      const int64_t n = opt.kv_append_n > 0 ? opt.kv_append_n : L;
      auto k = present.k.narrow(2, 0, n), v = present.v.narrow(2, 0, n);
      c.k = c.k.defined() ? torch::cat({c.k, k}, 2) : k.contiguous();
      c.v = c.v.defined() ? torch::cat({c.v, v}, 2) : v.contiguous();
    }
    if (!layer->moe_mlp.is_empty() && layer->moe_mlp->last_aux_loss().defined())
      aux = aux + layer->moe_mlp->last_aux_loss();
    ++li;
  }
  x = model->norm(x);
  ForwardResult r;
  r.hidden_BLD = x;
  if (!opt.skip_lm_head) {
    prof::Scope ps(prof::kHead);
    auto h = opt.logits_last_n > 0 && opt.logits_last_n < L ? x.narrow(1, L - opt.logits_last_n, opt.logits_last_n) : x;
    r.logits_BLV = to_f32_or_wider(lm_head(h));
  }
  r.aux_loss = aux;
  (void)B;
  return r;
}

std::vector<moe::MoeBlock> MoeDlmImpl::moe_blocks() {
  std::vector<moe::MoeBlock> out;
  for (auto& m : model->layers->children()) {
    auto layer = std::dynamic_pointer_cast<DecoderLayerImpl>(m);
    if (!layer->moe_mlp.is_empty()) out.push_back(layer->moe_mlp);
  }
  return out;
}

std::vector<moe::RoutingStats> MoeDlmImpl::last_routing_stats() {
  std::vector<moe::RoutingStats> out;
  for (auto& b : moe_blocks()) out.push_back(b->last_stats());
  return out;
}

void MoeDlmImpl::update_expert_biases(double rate) {
  for (auto& b : moe_blocks()) b->update_expert_bias(rate);
}

int64_t MoeDlmImpl::num_parameters() const {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

int64_t MoeDlmImpl::num_active_parameters() const {
  const auto& c = cfg_;
  int64_t D = c.hidden_size;
  int64_t attn = D * (c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim +
                 c.num_attention_heads * c.head_dim * D;
  int64_t n = c.vocab_size * D * 2;  // embedding row lookup counted as a matrix, like the head
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    n += attn;
    if (c.is_moe_layer(l)) {
      n += c.num_experts * D + c.num_experts_per_tok * 3 * D * c.moe_intermediate_size +
           3 * D * c.shared_expert_intermediate_size;
    } else {
      n += 3 * D * c.intermediate_size;
    }
  }
  return n;
}

double forward_flops_per_token(const ModelConfig& c, int64_t L, double experts_per_token) {
  const double k = experts_per_token < 0 ? static_cast<double>(c.num_experts_per_tok) : experts_per_token;
  double D = static_cast<double>(c.hidden_size);
  double attn_proj = D * (c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim +
                     c.num_attention_heads * c.head_dim * D;
  double attn_scores = 2.0 * static_cast<double>(L) * c.num_attention_heads * c.head_dim;
  double macs = D * c.vocab_size;  // LM head
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    macs += attn_proj + attn_scores;
    if (c.is_moe_layer(l)) {
      macs += c.num_experts * D + k * 3.0 * D * c.moe_intermediate_size +
              3.0 * D * c.shared_expert_intermediate_size;
    } else {
      macs += 3.0 * D * c.intermediate_size;
    }
  }
  return 2.0 * macs;
}

double MoeDlmImpl::forward_flops_per_token(int64_t L, double experts_per_token) const {
  return ecdlm::forward_flops_per_token(cfg_, L, experts_per_token);
}

}  // namespace ecdlm
