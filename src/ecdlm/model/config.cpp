#include "ecdlm/model/config.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include "ecdlm/moe/scaling.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/fs.h"
#include "ecdlm/util/json_value.h"
#include "ecdlm/util/log.h"

namespace ecdlm {
namespace fs = std::filesystem;
using nlohmann::json;

std::string to_string(RouterType t) {
  return t == RouterType::kExpertChoice ? "expert_choice" : "token_choice";
}
std::string to_string(Arch a) { return a == Arch::kLladaMoe ? "llada" : "llada2_moe"; }

int64_t ModelConfig::rotary_dim() const {
  return static_cast<int64_t>(static_cast<double>(head_dim) * partial_rotary_factor);
}

int64_t ModelConfig::num_moe_layers() const {
  return std::max<int64_t>(0, num_hidden_layers - first_k_dense_replace);
}

void ModelConfig::validate(const std::string& src) const {
  auto need = [&](bool ok, const char* field, const std::string& problem, const std::string& fix) {
    if (!ok) fail(src, field, problem, fix);
  };
  need(vocab_size > 0, "vocab_size", "must be > 0", "set the tokenizer's vocabulary size");
  need(hidden_size > 0, "hidden_size", "must be > 0", "use a positive width");
  need(num_hidden_layers > 0, "num_hidden_layers", "must be > 0", "use at least one layer");
  need(num_attention_heads > 0, "num_attention_heads", "must be > 0", "");
  need(num_key_value_heads > 0 && num_attention_heads % num_key_value_heads == 0,
       "num_key_value_heads",
       std::to_string(num_key_value_heads) + " does not divide num_attention_heads=" +
           std::to_string(num_attention_heads),
       "pick a divisor of the head count");
  need(head_dim > 0, "head_dim", "must be > 0", "");
  need(rotary_dim() % 2 == 0 && rotary_dim() <= head_dim, "partial_rotary_factor",
       "rotary dim " + std::to_string(rotary_dim()) + " must be even and <= head_dim",
       "use a factor giving an even number of dims");
  need(first_k_dense_replace >= 0 && first_k_dense_replace <= num_hidden_layers,
       "first_k_dense_replace", "must be in [0, num_hidden_layers]", "");
  if (first_k_dense_replace > 0)
    need(intermediate_size > 0, "intermediate_size", "dense layers need a positive width", "");
  if (num_moe_layers() > 0) {
    need(num_experts > 0, "num_experts", "must be > 0", "");
    need(num_experts_per_tok > 0 && num_experts_per_tok <= num_experts, "num_experts_per_tok",
         "k=" + std::to_string(num_experts_per_tok) + " must be in [1, num_experts=" +
             std::to_string(num_experts) + "]",
         "lower num_experts_per_tok");
    need(moe_intermediate_size > 0, "moe_intermediate_size", "must be > 0", "");
    need(shared_expert_intermediate_size >= 0, "shared_expert_intermediate_size", "must be >= 0", "");
    need(n_group >= 1 && num_experts % n_group == 0, "n_group",
         std::to_string(n_group) + " does not divide num_experts=" + std::to_string(num_experts),
         "use a divisor of num_experts");
    need(topk_group >= 1 && topk_group <= n_group, "topk_group", "must be in [1, n_group]", "");
    if (n_group > 1)
      need(topk_group * (num_experts / n_group) >= num_experts_per_tok, "topk_group",
           "the kept groups hold fewer experts than num_experts_per_tok", "raise topk_group");
    // Comparisons pass NaN and inf through: these fields must also be finite.
    const auto finite_ge0 = [](double v) { return v >= 0 && std::isfinite(v); };
    need(finite_ge0(moe_capacity_factor), "moe_capacity_factor", "must be a finite number >= 0 (0 = dropless)", "");
    need(routed_scaling_factor > 0 && std::isfinite(routed_scaling_factor), "routed_scaling_factor",
         "must be a finite number > 0", "");
    need(finite_ge0(moe_aux_loss_coeff), "moe_aux_loss_coeff", "must be a finite number >= 0", "0 = off");
    need(finite_ge0(moe_z_loss_coeff), "moe_z_loss_coeff", "must be a finite number >= 0", "0 = off");
    need(finite_ge0(moe_loss_free_bias_rate), "moe_loss_free_bias_rate", "must be a finite number >= 0", "0 = off");
    if (router_type == RouterType::kExpertChoice) {
      need(moe_capacity_k_min >= 0 && moe_capacity_k_max >= 0 &&
               (moe_capacity_k_max == 0 || moe_capacity_k_min <= moe_capacity_k_max),
           "moe_capacity_k_min", "need 0 <= k_min <= k_max", "");
      need(moe_capacity_k_max <= static_cast<double>(num_experts), "moe_capacity_k_max",
           "capacity k > num_experts", "lower k_max");
    }
  }
  need(rms_norm_eps > 0, "rms_norm_eps", "must be > 0", "");
  need(rope_theta > 0, "rope_theta", "must be > 0", "");
  need(mask_token_id < vocab_size && eos_token_id < vocab_size && pad_token_id < vocab_size,
       "mask_token_id", "special token ids must be < vocab_size", "");
}

namespace {

template <typename T>
void get_opt(const json& j, const char* key, T& out, const std::string& src) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return;
  json_value(*it, out, src, key);
}

RouterType parse_router(const std::string& s, const std::string& src) {
  if (s == "token_choice" || s == "topk") return RouterType::kTokenChoice;
  if (s == "expert_choice") return RouterType::kExpertChoice;
  fail(src, "moe_router_type", "unknown value '" + s + "'", "use token_choice or expert_choice");
}

// Keys that are understood, or known to be irrelevant to the math (dropout 0, HF plumbing).
const std::set<std::string>& known_keys() {
  static const std::set<std::string> k = {
      "architectures", "auto_map", "model_type", "vocab_size", "hidden_size", "num_hidden_layers",
      "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size",
      "first_k_dense_replace", "num_experts", "num_experts_per_tok", "moe_intermediate_size",
      "num_shared_experts", "n_group", "topk_group", "routed_scaling_factor", "norm_topk_prob",
      "score_function", "moe_router_enable_expert_bias", "rope_theta", "partial_rotary_factor",
      "rotary_dim", "rms_norm_eps", "use_qk_norm", "max_position_embeddings",
      "tie_word_embeddings", "mask_token_id", "eos_token_id", "pad_token_id", "bos_token_id",
      "torch_dtype", "hidden_act", "use_bias", "use_qkv_bias", "use_rmsnorm", "rope_scaling",
      "attention_dropout", "embedding_dropout", "output_dropout", "initializer_range",
      "use_cache", "output_router_logits", "router_dtype", "norm_head", "norm_softmax",
      "max_window_layers", "use_sliding_window", "using_split_qkv_in_self_attention",
      "transformers_version", "mode", "core_threshold",
      // LLaDA-MoE
      "attention_bias", "clip_qkv", "dense_intermediate_size", "expert_intermediate_size",
      "moe_layer_freq", "moe_router_score_function", "qk_layernorm", "router_aux_loss_coef",
      "router_num_group", "router_topk_group", "shared_expert_intermediate_size",
      // ecdlm
      "moe_router_type", "moe_capacity_factor", "moe_aux_loss_coeff", "moe_z_loss_coeff",
      "moe_loss_free_bias_rate", "moe_enable_scaling_factor", "moe_capacity_schedule",
      "moe_capacity_k_min", "moe_capacity_k_max", "moe_capacity_gaussian_sigma", "ecdlm_version",
      "quantization"};  // convert --quantize's block (model/quantize.h); the loader reads the tensors
  return k;
}

}  // namespace

ModelConfig ModelConfig::from_json(const json& j, const std::string& src,
                                   std::vector<std::string>* unknown) {
  if (!j.is_object()) fail(src, "", "config must be a JSON object", "");
  ModelConfig c;
  std::string model_type = "llada2_moe";
  get_opt(j, "model_type", model_type, src);
  if (model_type == "llada2_moe" || model_type == "llada2_moe_veomni") {
    c.arch = Arch::kLlada2Moe;
  } else if (model_type == "llada" || model_type == "lladamoe" || model_type == "llada_moe") {
    c.arch = Arch::kLladaMoe;
  } else {
    fail(src, "model_type", "unsupported '" + model_type + "'",
         "ecdlm loads llada2_moe and llada (LLaDA-MoE) checkpoints");
  }
  get_opt(j, "vocab_size", c.vocab_size, src);
  get_opt(j, "hidden_size", c.hidden_size, src);
  get_opt(j, "num_hidden_layers", c.num_hidden_layers, src);
  get_opt(j, "num_attention_heads", c.num_attention_heads, src);
  c.num_key_value_heads = c.num_attention_heads;
  get_opt(j, "num_key_value_heads", c.num_key_value_heads, src);
  c.head_dim = c.num_attention_heads > 0 ? c.hidden_size / c.num_attention_heads : 0;
  get_opt(j, "head_dim", c.head_dim, src);
  get_opt(j, "num_experts", c.num_experts, src);
  get_opt(j, "num_experts_per_tok", c.num_experts_per_tok, src);
  get_opt(j, "rope_theta", c.rope_theta, src);
  get_opt(j, "partial_rotary_factor", c.partial_rotary_factor, src);
  get_opt(j, "rms_norm_eps", c.rms_norm_eps, src);
  get_opt(j, "max_position_embeddings", c.max_position_embeddings, src);
  get_opt(j, "tie_word_embeddings", c.tie_word_embeddings, src);
  get_opt(j, "mask_token_id", c.mask_token_id, src);
  get_opt(j, "pad_token_id", c.pad_token_id, src);
  // HF configs may list several eos ids here; the tokenizer's and generation_config.json's lists
  // are read by the decoders (text/chat.h).
  if (j.contains("eos_token_id") && j["eos_token_id"].is_number()) get_opt(j, "eos_token_id", c.eos_token_id, src);
  get_opt(j, "moe_router_enable_expert_bias", c.moe_router_enable_expert_bias, src);

  if (c.arch == Arch::kLlada2Moe) {
    get_opt(j, "intermediate_size", c.intermediate_size, src);
    get_opt(j, "first_k_dense_replace", c.first_k_dense_replace, src);
    get_opt(j, "moe_intermediate_size", c.moe_intermediate_size, src);
    int64_t n_shared = 0;
    get_opt(j, "num_shared_experts", n_shared, src);
    c.shared_expert_intermediate_size = n_shared * c.moe_intermediate_size;
    get_opt(j, "n_group", c.n_group, src);
    get_opt(j, "topk_group", c.topk_group, src);
    get_opt(j, "routed_scaling_factor", c.routed_scaling_factor, src);
    get_opt(j, "norm_topk_prob", c.norm_topk_prob, src);
    std::string sf = "sigmoid";
    get_opt(j, "score_function", sf, src);
    if (sf != "sigmoid" && sf != "softmax")
      fail(src, "score_function", "unknown '" + sf + "'", "use sigmoid or softmax");
    c.score_function = sf == "sigmoid" ? ScoreFunction::kSigmoid : ScoreFunction::kSoftmax;
    get_opt(j, "use_qk_norm", c.use_qk_norm, src);
    if (c.pad_token_id >= 0 && c.eos_token_id < 0) c.eos_token_id = c.pad_token_id;
  } else {
    // LLaDA-MoE: the official code hard-codes softmax scores, no renormalization, no scale,
    // no groups, and lets the expert bias (if any) change the weights too.
    get_opt(j, "dense_intermediate_size", c.intermediate_size, src);
    get_opt(j, "expert_intermediate_size", c.moe_intermediate_size, src);
    c.shared_expert_intermediate_size = 0;
    get_opt(j, "shared_expert_intermediate_size", c.shared_expert_intermediate_size, src);
    if (c.shared_expert_intermediate_size < 0) c.shared_expert_intermediate_size = 0;
    c.score_function = ScoreFunction::kSoftmax;
    c.norm_topk_prob = false;
    c.routed_scaling_factor = 1.0;
    c.n_group = c.topk_group = 1;
    c.expert_bias_in_gate = true;
    c.use_qk_norm = true;
    get_opt(j, "qk_layernorm", c.use_qk_norm, src);
    if (j.contains("moe_layer_freq") && j["moe_layer_freq"].is_array()) {
      const auto& f = j["moe_layer_freq"];
      int64_t k = 0;
      const auto flag = [&](size_t i) {
        int64_t x = -1;
        if (!json_integer(f[i], x) || (x != 0 && x != 1))
          fail(src, "moe_layer_freq", "entry " + std::to_string(i) + " is " + json_shown(f[i]) + ", not 0 or 1",
               "0 marks a dense layer, 1 a MoE layer");
        return x;
      };
      while (k < static_cast<int64_t>(f.size()) && flag(static_cast<size_t>(k)) == 0) ++k;
      for (size_t i = static_cast<size_t>(k); i < f.size(); ++i)
        if (flag(i) != 1)
          fail(src, "moe_layer_freq", "only a dense prefix followed by MoE layers is supported",
               "");
      c.first_k_dense_replace = k;
    }
  }
  c.moe_z_loss_coeff = 0.0;  // HF checkpoints: no training losses unless asked
  std::string rt = "token_choice";
  get_opt(j, "moe_router_type", rt, src);
  c.router_type = parse_router(rt, src);
  if (j.contains("moe_z_loss_coeff")) get_opt(j, "moe_z_loss_coeff", c.moe_z_loss_coeff, src);
  get_opt(j, "moe_capacity_factor", c.moe_capacity_factor, src);
  get_opt(j, "moe_aux_loss_coeff", c.moe_aux_loss_coeff, src);
  get_opt(j, "moe_loss_free_bias_rate", c.moe_loss_free_bias_rate, src);
  c.moe_enable_scaling_factor = false;
  get_opt(j, "moe_enable_scaling_factor", c.moe_enable_scaling_factor, src);
  get_opt(j, "moe_capacity_schedule", c.moe_capacity_schedule, src);
  get_opt(j, "moe_capacity_k_min", c.moe_capacity_k_min, src);
  get_opt(j, "moe_capacity_k_max", c.moe_capacity_k_max, src);
  get_opt(j, "moe_capacity_gaussian_sigma", c.moe_capacity_gaussian_sigma, src);
  get_opt(j, "mode", c.dmoe_mode, src);
  c.ecdlm_native = j.contains("moe_router_type");
  get_opt(j, "core_threshold", c.dmoe_core_threshold, src);
  if (unknown) {
    for (auto it = j.begin(); it != j.end(); ++it)
      if (!known_keys().count(it.key())) unknown->push_back(it.key());
  }
  c.validate(src);
  return c;
}

ModelConfig ModelConfig::load(const std::string& path) {
  std::string file = fs::is_directory(path) ? (fs::path(path) / "config.json").string() : path;
  json j = read_json_file(file);
  std::vector<std::string> unknown;
  ModelConfig c = from_json(j, file, &unknown);
  // Commands may read one config more than once (flag checks, then the model): warn once per file.
  static std::set<std::string> warned;
  if (!unknown.empty() && warned.insert(file).second) {
    std::string list;
    for (const auto& k : unknown) list += (list.empty() ? "" : ", ") + k;
    LOG_WARN(file << ": keys not used by ecdlm: " << list);
  }
  return c;
}

json ModelConfig::to_json() const {
  json j;
  if (arch == Arch::kLlada2Moe) {
    j["architectures"] = {"LLaDA2MoeModelLM"};
    j["model_type"] = "llada2_moe";
    j["intermediate_size"] = intermediate_size;
    j["first_k_dense_replace"] = first_k_dense_replace;
    j["moe_intermediate_size"] = moe_intermediate_size;
    j["num_shared_experts"] =
        moe_intermediate_size > 0 ? shared_expert_intermediate_size / moe_intermediate_size : 0;
    j["n_group"] = n_group;
    j["topk_group"] = topk_group;
    j["routed_scaling_factor"] = routed_scaling_factor;
    j["norm_topk_prob"] = norm_topk_prob;
    j["score_function"] = score_function == ScoreFunction::kSigmoid ? "sigmoid" : "softmax";
    j["use_qk_norm"] = use_qk_norm;
    j["rotary_dim"] = rotary_dim();
    j["router_dtype"] = "fp32";
    j["use_bias"] = false;
    j["use_qkv_bias"] = false;
    j["hidden_act"] = "silu";
  } else {
    j["architectures"] = {"LLaDAMoEModelLM"};
    j["model_type"] = "llada";
    j["dense_intermediate_size"] = intermediate_size;
    j["expert_intermediate_size"] = moe_intermediate_size;
    j["shared_expert_intermediate_size"] =
        shared_expert_intermediate_size > 0 ? json(shared_expert_intermediate_size) : json(nullptr);
    j["qk_layernorm"] = use_qk_norm;
    std::vector<int64_t> freq(num_hidden_layers, 1);
    for (int64_t i = 0; i < first_k_dense_replace; ++i) freq[i] = 0;
    j["moe_layer_freq"] = freq;
    j["moe_router_score_function"] = "softmax";
    j["norm_topk_prob"] = false;
  }
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["head_dim"] = head_dim;
  j["num_experts"] = num_experts;
  j["num_experts_per_tok"] = num_experts_per_tok;
  j["moe_router_enable_expert_bias"] = moe_router_enable_expert_bias;
  j["rope_theta"] = rope_theta;
  j["partial_rotary_factor"] = partial_rotary_factor;
  j["rms_norm_eps"] = rms_norm_eps;
  j["max_position_embeddings"] = max_position_embeddings;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["rope_scaling"] = nullptr;
  j["torch_dtype"] = "float32";
  if (mask_token_id >= 0) j["mask_token_id"] = mask_token_id;
  if (eos_token_id >= 0) j["eos_token_id"] = eos_token_id;
  if (pad_token_id >= 0) j["pad_token_id"] = pad_token_id;
  j["moe_router_type"] = to_string(router_type);
  j["moe_capacity_factor"] = moe_capacity_factor;
  j["moe_aux_loss_coeff"] = moe_aux_loss_coeff;
  j["moe_z_loss_coeff"] = moe_z_loss_coeff;
  j["moe_loss_free_bias_rate"] = moe_loss_free_bias_rate;
  j["moe_enable_scaling_factor"] = moe_enable_scaling_factor;
  j["moe_capacity_schedule"] = moe_capacity_schedule;
  j["moe_capacity_k_min"] = moe_capacity_k_min;
  j["moe_capacity_k_max"] = moe_capacity_k_max;
  j["moe_capacity_gaussian_sigma"] = moe_capacity_gaussian_sigma;
  if (!dmoe_mode.empty()) j["mode"] = dmoe_mode;
  if (dmoe_core_threshold > 0) j["core_threshold"] = dmoe_core_threshold;
  return j;
}

void ModelConfig::save(const std::string& path) const { write_file_atomic(path, to_json().dump(2) + "\n"); }

moe::MoeConfig moe_config_from(const ModelConfig& c) {
  moe::MoeConfig m;
  m.hidden_size = c.hidden_size;
  m.num_experts = c.num_experts;
  m.moe_intermediate_size = c.moe_intermediate_size;
  m.shared_expert_intermediate_size = c.shared_expert_intermediate_size;
  m.router_type = c.router_type;
  m.num_experts_per_tok = c.num_experts_per_tok;
  m.score_function = c.score_function;
  m.n_group = c.n_group;
  m.topk_group = c.topk_group;
  m.norm_topk_prob = c.norm_topk_prob;
  m.routed_scaling_factor = c.routed_scaling_factor;
  // Loss-free balancing needs the bias buffer even when the checkpoint has none.
  m.enable_expert_bias = c.moe_router_enable_expert_bias || c.moe_loss_free_bias_rate > 0;
  m.expert_bias_in_gate = c.expert_bias_in_gate;
  m.capacity_factor = c.moe_capacity_factor;
  m.aux_loss_coeff = c.moe_aux_loss_coeff;
  m.z_loss_coeff = c.moe_z_loss_coeff;
  m.enable_scaling_factor = c.moe_enable_scaling_factor;
  m.capacity_schedule = c.moe_capacity_schedule;
  m.capacity_k_min = c.moe_capacity_k_min;
  m.capacity_k_max = c.moe_capacity_k_max;
  m.capacity_gaussian_sigma = c.moe_capacity_gaussian_sigma;
  return m;
}

void apply_tc_scaling_factor(ModelConfig& c) {
  if (c.router_type != RouterType::kTokenChoice || !c.moe_enable_scaling_factor ||
      c.shared_expert_intermediate_size <= 0)
    return;
  c.routed_scaling_factor = moe::tc_scaling_factor(
      c.num_experts, c.num_experts_per_tok,
      static_cast<double>(c.shared_expert_intermediate_size) / static_cast<double>(c.moe_intermediate_size));
}

}  // namespace ecdlm
