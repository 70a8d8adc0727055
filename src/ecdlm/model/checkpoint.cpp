#include "ecdlm/model/checkpoint.h"

#include <unistd.h>

#include <filesystem>
#include <map>
#include <set>

#include "ecdlm/util/error.h"
#include "ecdlm/util/strings.h"
#include "ecdlm/util/fs.h"
#include "ecdlm/util/log.h"

namespace ecdlm {
namespace fs = std::filesystem;
namespace idx = torch::indexing;

namespace {


// One checkpoint tensor and where it lives inside a model tensor: `rows` selects a slice of
// dim 0 (fused QKV parts), `expert` selects one expert of a stacked tensor.
struct Slot {
  std::string hf_name;
  torch::Tensor target;  // view into the model tensor
};

// LLaDA-MoE names for our llada2-style internal names.
std::string llada_moe_name(const std::string& n) {
  static const std::vector<std::pair<std::string, std::string>> subs = {
      {"model.word_embeddings.", "model.embed_tokens."},
      {".attention.query_layernorm.", ".self_attn.q_norm."},
      {".attention.key_layernorm.", ".self_attn.k_norm."},
      {".attention.dense.", ".self_attn.o_proj."},
      {".mlp.gate.expert_bias", ".mlp.expert_bias"},
      {".mlp.shared_experts.", ".shared_expert."},
  };
  std::string out = n;
  for (const auto& [a, b] : subs) {
    auto p = out.find(a);
    if (p != std::string::npos) out.replace(p, a.size(), b);
  }
  return out;
}

std::vector<Slot> checkpoint_slots(MoeDlm& model) {
  const auto& c = model->config();
  const bool llada = c.arch == Arch::kLladaMoe;
  std::vector<Slot> slots;
  auto add = [&](const std::string& name, const torch::Tensor& t) {
    // Stacked experts: "...mlp.experts.<proj>" (no ".weight") -> one tensor per expert.
    for (const char* proj : {"gate_proj", "up_proj", "down_proj"}) {
      std::string suf = std::string("mlp.experts.") + proj;
      if (ends_with(name, suf)) {
        std::string prefix = name.substr(0, name.size() - std::strlen(proj));
        for (int64_t e = 0; e < t.size(0); ++e)
          slots.push_back({prefix + std::to_string(e) + "." + proj + ".weight", t[e]});
        return;
      }
    }
    if (llada && ends_with(name, ".attention.query_key_value.weight")) {
      std::string base = name.substr(0, name.size() - std::strlen("attention.query_key_value.weight"));
      const int64_t q = c.num_attention_heads * c.head_dim, kv = c.num_key_value_heads * c.head_dim;
      slots.push_back({base + "self_attn.q_proj.weight", t.narrow(0, 0, q)});
      slots.push_back({base + "self_attn.k_proj.weight", t.narrow(0, q, kv)});
      slots.push_back({base + "self_attn.v_proj.weight", t.narrow(0, q + kv, kv)});
      return;
    }
    slots.push_back({llada ? llada_moe_name(name) : name, t});
  };
  for (const auto& p : model->named_parameters()) add(p.key(), p.value());
  for (const auto& b : model->named_buffers()) add(b.key(), b.value());
  return slots;
}

// Per-expert names "<layer>.mlp.experts.<e>.<proj>": a config whose num_experts disagrees with
// the checkpoint would otherwise surface as a router shape error or as silently unused experts.
void check_expert_count(const ModelConfig& c, const io::SafetensorsSet& st) {
  const std::string key = ".mlp.experts.";
  std::map<std::string, std::pair<int64_t, std::string>> experts;  // layer -> (1 + max index, a name)
  for (const auto& name : st.names()) {
    const size_t at = name.find(key);
    if (at == std::string::npos) continue;
    const size_t b = at + key.size(), e = name.find('.', b);
    // Up to 9 digits: an index a config could hold (and std::stoll cannot overflow).
    if (e == std::string::npos || e == b || e - b > 9 ||
        name.find_first_not_of("0123456789", b) != e)
      continue;
    auto& [n, example] = experts[name.substr(0, b - 1)];
    const int64_t id = std::stoll(name.substr(b, e - b));
    if (id + 1 > n) {
      n = id + 1;
      example = name;
    }
  }
  for (const auto& [layer, found] : experts) {
    if (found.first == c.num_experts) continue;
    fail(st.where(found.second), layer,
         "the checkpoint has " + std::to_string(found.first) + " experts but config num_experts = " +
             std::to_string(c.num_experts),
         "set \"num_experts\": " + std::to_string(found.first) +
             " in config.json, or use the checkpoint this config was written for");
  }
}

}  // namespace

std::vector<std::pair<std::string, torch::Tensor>> export_tensors(MoeDlm& model) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (auto& s : checkpoint_slots(model)) out.emplace_back(s.hf_name, s.target.detach().contiguous());
  return out;
}

std::vector<std::string> load_weights(MoeDlm& model, const io::SafetensorsSet& st) {
  torch::NoGradGuard ng;
  std::set<std::string> used;
  check_expert_count(model->config(), st);
  for (auto& s : checkpoint_slots(model)) {
    if (!st.has(s.hf_name)) {
      fail(st.source(), s.hf_name, "tensor missing from the checkpoint",
           "check config.json matches the weights (layers, experts, first_k_dense_replace)");
    }
    // copy_ would turn integer (e.g. quantised) weights into floats without their scales.
    const io::DType dt = st.info(s.hf_name).dtype;
    if (s.target.is_floating_point() && !torch::isFloatingType(io::dtype_to_torch(dt)))
      fail(st.where(s.hf_name), s.hf_name,
           "dtype " + io::dtype_name(dt) + " cannot be loaded into a floating-point parameter",
           "store the weights as F32, BF16 or F16 (quantised checkpoints are not supported)");
    auto src = st.get(s.hf_name, s.target.sizes().vec());
    s.target.copy_(src);  // converts dtype; experts are copied one slice at a time
    used.insert(s.hf_name);
  }
  std::vector<std::string> unused;
  for (const auto& n : st.names())
    if (!used.count(n)) unused.push_back(n);
  return unused;
}

MoeDlm load_model(const std::string& dir, const ModelConfig* cfg_override) {
  std::string cfg_path = (fs::path(dir) / "config.json").string();
  if (!fs::exists(cfg_path))
    fail(dir, "config.json", "not found", "pass a model directory (config.json + model.safetensors)");
  ModelConfig cfg = cfg_override ? *cfg_override : ModelConfig::load(cfg_path);
  MoeDlm model(cfg);
  auto st = io::SafetensorsSet::open(dir);
  auto unused = load_weights(model, st);
  if (!unused.empty())
    LOG_WARN(st.source() << ": " << unused.size() << " tensors not used by the model, e.g. "
                         << unused.front());
  return model;
}

void commit_dir(const std::string& tmp_dir, const std::string& dir) {
  std::error_code ec;
  std::string old = dir + ".old." + std::to_string(::getpid());
  bool had = fs::exists(dir);
  if (had) fs::rename(dir, old, ec);
  if (ec) fail(dir, "", "cannot move the previous directory aside: " + ec.message(), "check permissions");
  fs::rename(tmp_dir, dir, ec);
  if (ec) {
    if (had) fs::rename(old, dir);
    fail(dir, "", "cannot rename the new directory into place: " + ec.message(), "check permissions");
  }
  if (had) fs::remove_all(old, ec);
}

void save_model_dir(MoeDlm& model, const std::string& dir, const std::string& tokenizer_dir,
                    const std::vector<std::pair<std::string, std::string>>& extra_files) {
  fs::path target(dir);
  ensure_writable_dir(target.has_parent_path() ? target.parent_path().string() : ".");
  std::string tmp = dir + ".tmp." + std::to_string(::getpid());
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp);
  model->config().save((fs::path(tmp) / "config.json").string());
  io::save_safetensors((fs::path(tmp) / "model.safetensors").string(), export_tensors(model),
                       {{"format", "pt"}});
  if (!tokenizer_dir.empty()) {
    for (const char* f : {"tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                          "special_tokens_map.json", "vocab.json", "merges.txt"}) {
      auto src = fs::path(tokenizer_dir) / f;
      if (fs::exists(src)) fs::copy_file(src, fs::path(tmp) / f, fs::copy_options::overwrite_existing);
    }
  }
  for (const auto& [name, content] : extra_files)
    write_file_atomic((fs::path(tmp) / name).string(), content);
  commit_dir(tmp, dir);
}

}  // namespace ecdlm
