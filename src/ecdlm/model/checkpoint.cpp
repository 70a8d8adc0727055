#include "ecdlm/model/checkpoint.h"
#include "ecdlm/model/checkpoint_check.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <regex>
#include <set>

#include "ecdlm/kernels/pack_arena.h"
#include "ecdlm/model/init.h"
#include "ecdlm/model/model_dir.h"
#include "ecdlm/model/quantize.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/strings.h"
#include "ecdlm/util/fs.h"
#include "ecdlm/util/log.h"

namespace ecdlm {
namespace fs = std::filesystem;
namespace idx = torch::indexing;

namespace {


// One checkpoint tensor and where it lives inside a model tensor: a slice of dim 0 (fused QKV
// parts) or one expert of a stacked tensor.
struct Slot {
  std::string hf_name;
  torch::Tensor target;  // view into the model tensor
};

const char* const kProjs[] = {"gate_proj", "up_proj", "down_proj"};

}  // namespace

// LLaDA-MoE names for our llada2-style internal names.
std::string llada_moe_checkpoint_name(const std::string& n) {
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

namespace {

// Expert modules by their module path ("model.layers.3.mlp.experts").
std::map<std::string, moe::Experts> expert_modules(MoeDlm& model) {
  std::map<std::string, moe::Experts> out;
  for (const auto& m : model->named_modules())
    if (auto ex = std::dynamic_pointer_cast<moe::ExpertsImpl>(m.value())) out.emplace(m.key(), moe::Experts(ex));
  return out;
}

// "<prefix>.gate_proj" of a stacked expert parameter -> (prefix, proj index); proj -1 otherwise.
std::pair<std::string, int> stacked_expert_param(const std::string& name) {
  for (int p = 0; p < 3; ++p) {
    const std::string suf = std::string("mlp.experts.") + kProjs[p];
    if (ends_with(name, suf)) return {name.substr(0, name.size() - std::strlen(kProjs[p]) - 1), p};
  }
  return {"", -1};
}

torch::Tensor expert_matrix(const moe::Experts& ex, int proj, int64_t e) {
  return proj == 0 ? ex->gate_w(e) : proj == 1 ? ex->up_w(e) : ex->down_w(e);
}

// LLaDA-MoE stores q/k/v separately; our fused QKV rows are [Q heads | K heads | V heads].
// For a fused "<base>attention.query_key_value.weight" tensor: (file name, view of its rows).
std::vector<std::pair<std::string, torch::Tensor>> llada_qkv_parts(const ModelConfig& c, const std::string& name,
                                                                    const torch::Tensor& fused) {
  const std::string base = name.substr(0, name.size() - std::strlen("attention.query_key_value.weight"));
  const int64_t q = c.num_attention_heads * c.head_dim, kv = c.num_key_value_heads * c.head_dim;
  return {{base + "self_attn.q_proj.weight", fused.narrow(0, 0, q)},
          {base + "self_attn.k_proj.weight", fused.narrow(0, q, kv)},
          {base + "self_attn.v_proj.weight", fused.narrow(0, q + kv, kv)}};
}

std::vector<Slot> checkpoint_slots(MoeDlm& model) {
  const auto& c = model->config();
  const bool llada = c.arch == Arch::kLladaMoe;
  const auto experts = expert_modules(model);
  std::vector<Slot> slots;
  auto add = [&](const std::string& name, const torch::Tensor& t) {
    auto [prefix, proj] = stacked_expert_param(name);
    if (proj >= 0) {  // stacked experts -> one tensor per expert
      const auto& ex = experts.at(prefix);
      for (int64_t e = 0; e < ex->num_experts(); ++e)
        slots.push_back({prefix + "." + std::to_string(e) + "." + kProjs[proj] + ".weight",
                         expert_matrix(ex, proj, e)});
      return;
    }
    if (llada && ends_with(name, ".attention.query_key_value.weight")) {
      for (auto& [hf, view] : llada_qkv_parts(c, name, t)) slots.push_back({hf, view});
      return;
    }
    slots.push_back({llada ? llada_moe_checkpoint_name(name) : name, t});
  };
  for (const auto& p : model->named_parameters()) add(p.key(), p.value());
  for (const auto& b : model->named_buffers()) add(b.key(), b.value());
  return slots;
}

int64_t nbytes(const torch::Tensor& t) { return t.numel() * static_cast<int64_t>(t.element_size()); }

// The expert index of a per-expert tensor name ("...mlp.experts.<e>.<proj>..."), or "".
std::string expert_index(const std::string& name) {
  static const std::regex expert_re(R"(\.mlp\.experts\.(\d+)\.)");
  std::smatch m;
  return std::regex_search(name, m, expert_re) ? m[1].str() : std::string();
}

// Reads checkpoint tensors into a model: a view of the mapping or a (converted) copy.
class WeightLoader {
 public:
  WeightLoader(const io::SafetensorsSet& st, const LoadOptions& opt) : st_(st), opt_(opt) {}

  torch::Tensor source(const std::string& name, const std::vector<int64_t>& shape) {
    if (!st_.has(name)) {
      const std::string e = expert_index(name);
      if (!e.empty())
        fail(st_.source(), name, "tensor missing: the checkpoint has no expert " + e,
             "num_experts in config.json must equal the experts stored in the checkpoint");
      fail(st_.source(), name, "tensor missing from the checkpoint",
           "check config.json matches the weights (layers, experts, first_k_dense_replace)");
    }
    const auto d = st_.info(name).dtype;
    if (d != io::DType::F32 && d != io::DType::BF16 && d != io::DType::F16)
      fail(st_.where(name), name, "weights stored as " + io::dtype_name(d) + " are not supported",
           "store weights as F32, BF16 or F16");
    used_.insert(name);
    return st_.get(name, shape);
  }

  // A whole parameter or buffer. Mapped when the dtype already matches (the mapping is shared and
  // read-only); buffers are always private f32 copies (tiny, and training updates them in place).
  void assign(torch::Tensor& target, const torch::Tensor& src, bool is_buffer) {
    if (!opt_.map_weights) {
      target.copy_(src);
      stats.copied_bytes += nbytes(src);
    } else if (is_buffer) {
      target.set_data(src.to(torch::kFloat32).clone());
      stats.copied_bytes += nbytes(target);
    } else if (src.scalar_type() == opt_.dtype) {
      target.set_data(in_place(src));
    } else {
      target.set_data(src.to(opt_.dtype));
      stats.copied_bytes += nbytes(target);
    }
  }

  // Part of a parameter that the file stores split (LLaDA-MoE q/k/v into the fused QKV).
  void assign_part(const torch::Tensor& part_view, const torch::Tensor& src) {
    part_view.copy_(src);
    stats.copied_bytes += nbytes(part_view);
  }

  torch::Tensor as_expert_weight(const torch::Tensor& src) {
    if (src.scalar_type() == opt_.dtype) return in_place(src);
    auto t = src.to(opt_.dtype);
    stats.copied_bytes += nbytes(t);
    return t;
  }

  // A packed weight (model/quantize.h) for logical `shape`: views of the mapping, one per expert
  // for stacked experts. Inference only.
  std::vector<io::QuantWeight> quantized(const std::string& weight_name, const std::vector<int64_t>& shape) {
    if (!opt_.map_weights)
      fail(st_.source(), quant_base(weight_name) + ".qweight",
           "a quantized checkpoint is for inference only (generate, logits, eval, info, serve)",
           "train, retrofit or export from the bf16 original");
    std::vector<std::string> names;
    auto out = read_quantized(st_, weight_name, shape, &names);
    used_.insert(names.begin(), names.end());
    for (const auto& q : out) stats.mapped_bytes += q.bytes();
    stats.quantized = true;
    return out;
  }

  const std::set<std::string>& used() const { return used_; }
  LoadStats stats;

 private:
  // A tensor already in the load dtype: the mapping itself, or (copy_weights) a private copy from
  // the load's huge-page arena (load_weights opens it: fresh 4 KB pages fault one by one, ~4 ms per
  // MB in this guest), after which the file's pages are handed back.
  torch::Tensor in_place(const torch::Tensor& src) {
    if (!opt_.copy_weights) {
      stats.mapped_bytes += nbytes(src);
      return src;
    }
    const auto bytes = static_cast<std::size_t>(nbytes(src));
    if (bytes == 0 || !src.is_contiguous()) {
      auto t = src.clone(at::MemoryFormat::Contiguous);
      stats.copied_bytes += nbytes(t);
      return t;
    }
    void* p = kernels::detail::pack_alloc(bytes);
    std::memcpy(p, src.data_ptr(), bytes);
    io::release_pages(src.data_ptr(), bytes);
    stats.copied_bytes += static_cast<int64_t>(bytes);
    return torch::from_blob(p, src.sizes(), [bytes](void* q) { kernels::detail::pack_free(q, bytes); },
                            src.options());
  }

  const io::SafetensorsSet& st_;
  const LoadOptions& opt_;
  std::set<std::string> used_;
};

void load_experts(WeightLoader& ld, const io::SafetensorsSet& st, const std::string& prefix,
                  moe::Experts& ex, const LoadOptions& opt) {
  torch::Tensor* stacked[3] = {&ex->gate_proj, &ex->up_proj, &ex->down_proj};
  if (stored_quantized(st, prefix + ".gate_proj") || stored_quantized(st, prefix + ".0.gate_proj.weight")) {
    const bool stacked_file = stored_quantized(st, prefix + ".gate_proj");
    ld.stats.stacked_experts = stacked_file;
    std::vector<io::QuantWeight> q[3];
    for (int p = 0; p < 3; ++p) {
      const auto shape = stacked[p]->sizes().vec();
      if (stacked_file) {
        q[p] = ld.quantized(prefix + "." + kProjs[p], shape);
        continue;
      }
      const std::vector<int64_t> one(shape.begin() + 1, shape.end());
      for (int64_t e = 0; e < ex->num_experts(); ++e)
        q[p].push_back(ld.quantized(prefix + "." + std::to_string(e) + "." + kProjs[p] + ".weight", one)[0]);
    }
    ex->bind_quantized(std::move(q[0]), std::move(q[1]), std::move(q[2]));
    return;
  }
  if (st.has(prefix + ".gate_proj")) {  // stacked layout: one tensor per projection
    ld.stats.stacked_experts = true;
    for (int p = 0; p < 3; ++p)
      ld.assign(*stacked[p], ld.source(prefix + "." + kProjs[p], stacked[p]->sizes().vec()), false);
    return;
  }
  const int64_t E = ex->num_experts();
  std::vector<torch::Tensor> per[3];
  for (int p = 0; p < 3; ++p) {
    const auto shape = stacked[p]->sizes().slice(1).vec();
    for (int64_t e = 0; e < E; ++e) {
      auto src = ld.source(prefix + "." + std::to_string(e) + "." + kProjs[p] + ".weight", shape);
      if (opt.map_weights) {
        per[p].push_back(ld.as_expert_weight(src));
      } else {
        (*stacked[p])[e].copy_(src);  // one expert slice at a time: no second full copy
        ld.stats.copied_bytes += nbytes(src);
      }
    }
  }
  if (opt.map_weights) ex->bind_per_expert(std::move(per[0]), std::move(per[1]), std::move(per[2]));
}

}  // namespace

std::vector<std::pair<std::string, torch::Tensor>> export_tensors(MoeDlm& model) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (auto& s : checkpoint_slots(model)) out.emplace_back(s.hf_name, s.target.detach().contiguous());
  return out;
}

std::vector<std::string> load_weights(MoeDlm& model, const io::SafetensorsSet& st,
                                      const LoadOptions& opt, LoadStats* stats) {
  torch::NoGradGuard ng;
  const auto& c = model->config();
  const bool llada = c.arch == Arch::kLladaMoe;
  // The router's rows say how many experts the file holds: name num_experts, not a tensor shape.
  for (int64_t l = c.first_k_dense_replace; l < c.num_hidden_layers; ++l) {
    const std::string gate = "model.layers." + std::to_string(l) + ".mlp.gate.weight";
    if (st.has(gate) && !st.info(gate).shape.empty() && st.info(gate).shape[0] != c.num_experts)
      fail(st.where(gate), gate, "the checkpoint has " + std::to_string(st.info(gate).shape[0]) +
                                     " experts but config.json num_experts is " + std::to_string(c.num_experts),
           "set num_experts in config.json to the number of experts stored in the checkpoint");
  }
  // The copies' region: every in-place byte plus each tensor's alignment, committed as written.
  std::optional<kernels::detail::PackArenaScope> arena;
  if (opt.map_weights && opt.copy_weights)
    arena.emplace(static_cast<std::size_t>(in_place_bytes(st, opt.dtype)) + 64 * st.names().size());
  WeightLoader ld(st, opt);
  for (auto& [prefix, ex] : expert_modules(model)) load_experts(ld, st, prefix, ex, opt);
  // Linear weights stored quantized bind their packed form; `weight` shrinks to [0, in].
  std::set<std::string> quantized;
  for (const auto& m : model->named_modules()) {
    auto lin = std::dynamic_pointer_cast<LinearNoBiasImpl>(m.value());
    if (!lin) continue;
    const std::string name = m.key() + ".weight";
    const auto shape = lin->weight.sizes().vec();
    if (llada && ends_with(name, ".attention.query_key_value.weight")) {
      const auto parts = llada_qkv_parts(c, name, lin->weight);
      if (!stored_quantized(st, parts[0].first)) continue;
      std::vector<io::QuantWeight> q;
      for (const auto& [hf, view] : parts) q.push_back(ld.quantized(hf, view.sizes().vec())[0]);
      lin->bind_quantized(concat_rows(q, st.source() + ": " + name));
    } else {
      const std::string file_name = llada ? llada_moe_checkpoint_name(name) : name;
      if (!stored_quantized(st, file_name)) continue;
      lin->bind_quantized(ld.quantized(file_name, shape)[0]);
    }
    quantized.insert(name);
  }
  auto load_one = [&](const std::string& name, torch::Tensor& t, bool is_buffer) {
    if (stacked_expert_param(name).second >= 0 || quantized.count(name)) return;
    if (llada && ends_with(name, ".attention.query_key_value.weight")) {
      if (opt.map_weights) t.set_data(torch::empty(t.sizes(), t.options().dtype(opt.dtype)));
      for (auto& [hf, view] : llada_qkv_parts(c, name, t)) ld.assign_part(view, ld.source(hf, view.sizes().vec()));
      return;
    }
    ld.assign(t, ld.source(llada ? llada_moe_checkpoint_name(name) : name, t.sizes().vec()), is_buffer);
  };
  for (auto& p : model->named_parameters()) load_one(p.key(), p.value(), false);
  for (auto& b : model->named_buffers()) load_one(b.key(), b.value(), true);
  if (opt.map_weights)
    for (auto& p : model->parameters()) p.set_requires_grad(false);

  std::vector<std::string> unused;
  for (const auto& n : st.names()) {
    if (ld.used().count(n)) continue;
    const std::string e = expert_index(n);
    if (!e.empty())
      fail(st.where(n), n, "the checkpoint has expert " + e + " but config.json num_experts is " +
                               std::to_string(c.num_experts),
           "set num_experts in config.json to the number of experts stored in the checkpoint");
    unused.push_back(n);
  }
  if (stats) *stats = ld.stats;
  return unused;
}

MoeDlm load_model(const std::string& dir, const ModelConfig* cfg_override, const LoadOptions& opt,
                  LoadStats* stats) {
  if (opt.dtype != torch::kFloat32 && opt.dtype != torch::kBFloat16)
    fail(dir, "--dtype", "unsupported compute dtype", "use f32 or bf16");
  std::string cfg_path = (fs::path(dir) / "config.json").string();
  if (!fs::exists(cfg_path))
    fail(dir, "config.json", "not found", "pass a model directory (config.json + model.safetensors)");
  ModelConfig cfg = cfg_override ? *cfg_override : ModelConfig::load(cfg_path);
  if (cfg.mask_token_id < 0) {
    // HF LLaDA2 / LLaDA-MoE configs leave the mask id to generation_config.json or the tokenizer.
    const auto mask = resolve_mask_id(dir, cfg);
    if (mask.id >= 0) {
      cfg.mask_token_id = mask.id;
      LOG_DEBUG(dir << ": mask_token_id " << cfg.mask_token_id << " from " << mask.source);
    }
  }
  auto st = io::SafetensorsSet::open(dir);
  check_checkpoint_header(cfg, st, cfg_path);  // before MoeDlm(cfg) allocates what the config implies
  auto build = [&] {
    if (!opt.map_weights) return MoeDlm(cfg);
    SkipWeightInit skip;  // every tensor is replaced below; never touch the placeholders
    return MoeDlm(cfg);
  };
  MoeDlm model = build();
  auto unused = load_weights(model, st, opt, stats);
  if (!opt.map_weights && opt.dtype != torch::kFloat32) model->to(opt.dtype);
  if (!unused.empty())
    LOG_WARN(st.source() << ": " << unused.size() << " tensors not used by the model, e.g. "
                         << unused.front());
  return model;
}

int64_t weight_bytes_touched(MoeDlm& model, int64_t embedding_rows) {
  int64_t total = 0;
  for (const auto& p : model->named_parameters()) {
    if (stacked_expert_param(p.key()).second >= 0) continue;
    const auto& t = p.value();
    if (embedding_rows >= 0 && p.key() == "model.word_embeddings.weight")
      total += std::min(embedding_rows, t.size(0)) * t.size(1) * static_cast<int64_t>(t.element_size());
    else
      total += nbytes(t);
  }
  for (const auto& b : model->named_buffers()) total += nbytes(b.value());
  for (const auto& [prefix, ex] : expert_modules(model)) total += ex->num_touched() * ex->bytes_per_expert();
  for (const auto& m : model->named_modules())  // quantized linears: their packed bytes
    if (auto lin = std::dynamic_pointer_cast<LinearNoBiasImpl>(m.value()); lin && lin->quantized())
      total += lin->weight_bytes();
  return total;
}

void reset_touched_experts(MoeDlm& model) {
  for (auto& [prefix, ex] : expert_modules(model)) ex->reset_touched();
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
  // A file in the way would be replaced by a directory without a word.
  if (fs::exists(dir) && !fs::is_directory(dir))
    fail(dir, "", "exists and is not a directory", "pass a directory path for the output");
  fs::path target(dir);
  ensure_writable_dir(target.has_parent_path() ? target.parent_path().string() : ".");
  std::string tmp = dir + ".tmp." + std::to_string(::getpid());
  std::error_code ec;
  fs::remove_all(tmp, ec);
  // A failed write (a full disk) removes its temp dir, so the previous `dir` stays as it was and
  // nothing half-written is left behind.
  try {
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
  } catch (const UserError& e) {
    fs::remove_all(tmp, ec);
    fail(dir, "", std::string("checkpoint not written: ") + e.what(),
         "free disk space; the previous checkpoint is unchanged");
  } catch (const std::filesystem::filesystem_error& e) {
    fs::remove_all(tmp, ec);
    fail(dir, "", std::string("checkpoint not written: ") + e.code().message() + " (" + e.path1().string() + ")",
         "free disk space; the previous checkpoint is unchanged");
  }
  commit_dir(tmp, dir);
}

}  // namespace ecdlm
