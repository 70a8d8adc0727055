#include "ecdlm/model/convert.h"

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <set>

#include "ecdlm/model/checkpoint.h"
#include "ecdlm/model/checkpoint_check.h"
#include "ecdlm/model/init.h"
#include "ecdlm/model/moe_dlm.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/fs.h"
#include "ecdlm/util/log.h"
#include "ecdlm/util/strings.h"

namespace ecdlm {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

using StPtr = std::shared_ptr<io::SafetensorsSet>;

const std::regex& per_expert_re() {
  static const std::regex re(R"(^(.*\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$)");
  return re;
}
const std::regex& stacked_re() {
  static const std::regex re(R"(^(.*\.mlp\.experts)\.(gate_proj|up_proj|down_proj)$)");
  return re;
}

// "keep" -> nullopt (the file's dtype); otherwise the target of every floating tensor.
std::optional<io::DType> parse_out_dtype(const std::string& s, const std::string& flag) {
  if (s == "keep") return std::nullopt;
  if (s == "f32") return io::DType::F32;
  if (s == "bf16") return io::DType::BF16;
  if (s == "f16") return io::DType::F16;
  fail("", flag, "unknown dtype '" + s + "'", "use keep, f32, bf16 or f16");
}

bool is_float(io::DType d) { return d == io::DType::F32 || d == io::DType::BF16 || d == io::DType::F16; }

io::DType out_dtype(io::DType in, std::optional<io::DType> want) {
  return want && is_float(in) ? *want : in;
}

std::string torch_dtype_name(io::DType d) {
  return d == io::DType::BF16 ? "bfloat16" : d == io::DType::F16 ? "float16" : "float32";
}

// A pass-through tensor (converted when `dt` differs from the file's dtype).
io::PendingTensor pass(const StPtr& st, const std::string& src_name, const std::string& out_name,
                       io::DType dt) {
  const auto& info = st->info(src_name);
  io::PendingTensor p;
  p.name = out_name;
  p.dtype = dt;
  p.shape = info.shape;
  p.make = [st, src_name, dt] {
    auto w = st->get(src_name).to(io::dtype_to_torch(dt), /*non_blocking=*/false, /*copy=*/true);
    st->release(src_name);  // copied out: this process need not keep the source pages
    return w;
  };
  return p;
}

// Per-expert tensors of one (layer, projection), by expert index; checked to be 0..E-1 alike.
struct ExpertGroup {
  std::string prefix, proj;
  std::map<int64_t, std::string> names;
  std::string stacked_name;  // when the file already stores it stacked
};

void check_group(const io::SafetensorsSet& st, const ExpertGroup& g) {
  int64_t want = 0;
  const auto& first = st.info(g.names.begin()->second);
  for (const auto& [e, name] : g.names) {
    if (e != want)
      fail(st.where(name), name, "expert " + std::to_string(want) + " of " + g.prefix + " is missing",
           "the checkpoint must store experts 0..E-1 of every layer");
    const auto& t = st.info(name);
    if (t.shape != first.shape || t.dtype != first.dtype)
      fail(st.where(name), name, "shape or dtype differs from expert 0's", "re-export the checkpoint");
    ++want;
  }
}

void copy_side_files(const std::string& src, const std::string& dst, const std::optional<io::DType>& dt,
                     const json* quantization = nullptr) {
  for (const auto& e : fs::directory_iterator(src)) {
    if (!e.is_regular_file()) continue;
    const std::string name = e.path().filename().string();
    if (ends_with(name, ".safetensors") || name == "model.safetensors.index.json") continue;
    if (name == "config.json" && (dt || quantization)) {
      json cfg = read_json_file(e.path().string());
      if (dt) cfg["torch_dtype"] = torch_dtype_name(*dt);
      if (quantization) cfg["quantization"] = *quantization;
      write_file_atomic((fs::path(dst) / name).string(), cfg.dump(2) + "\n");
      continue;
    }
    fs::copy_file(e.path(), fs::path(dst) / name, fs::copy_options::overwrite_existing);
  }
}

// Runs `write(tmp)` on a fresh sibling temp dir of `dst`, then renames it into place: a failure
// leaves no partial output. `src`, if given, must not be `dst`.
void write_dir_atomically(const std::string& src, const std::string& dst,
                          const std::function<void(const std::string&)>& write) {
  std::error_code ec;
  if (!src.empty() && fs::exists(dst) && fs::equivalent(src, dst, ec))
    fail(dst, "", "the output is the input directory", "write to another directory");
  // A file in the way would be replaced by a directory without a word.
  if (fs::exists(dst) && !fs::is_directory(dst))
    fail(dst, "", "exists and is not a directory", "pass a directory path for the output");
  fs::path target(dst);
  ensure_writable_dir(target.has_parent_path() ? target.parent_path().string() : ".");
  const std::string tmp = dst + ".tmp." + std::to_string(::getpid());
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp);
  try {
    write(tmp);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  commit_dir(tmp, dst);
}

// The output tensors of a checkpoint in `layout`, in the file's name order.
std::vector<io::PendingTensor> relayout(const StPtr& st, ExpertLayout layout, std::optional<io::DType> want,
                                        ConvertReport& rep) {
  std::map<std::string, ExpertGroup> groups;  // key prefix + "." + proj
  std::vector<std::string> order;             // names and group keys, first appearance
  for (const auto& name : st->names()) {
    std::smatch m;
    std::string key;
    if (std::regex_match(name, m, per_expert_re())) {
      key = m[1].str() + "." + m[3].str();
      auto& g = groups[key];
      g.prefix = m[1].str();
      g.proj = m[3].str();
      g.names[std::stoll(m[2].str())] = name;
    } else if (std::regex_match(name, m, stacked_re())) {
      key = name;
      auto& g = groups[key];
      g.prefix = m[1].str();
      g.proj = m[2].str();
      g.stacked_name = name;
    }
    if (key.empty()) {
      order.push_back(name);
    } else if (groups[key].names.size() + (groups[key].stacked_name.empty() ? 0 : 1) == 1) {
      order.push_back("\n" + key);  // group marker
    }
    ++rep.tensors_in;
  }
  std::vector<io::PendingTensor> out;
  for (const auto& item : order) {
    if (item[0] != '\n') {
      out.push_back(pass(st, item, item, out_dtype(st->info(item).dtype, want)));
      continue;
    }
    const auto& g = groups.at(item.substr(1));
    if (!g.stacked_name.empty() && !g.names.empty())
      fail(st->source(), g.stacked_name, "stored both stacked and per expert", "keep one layout");
    ++rep.expert_groups;
    if (!g.stacked_name.empty()) {  // stacked in the file
      const auto& info = st->info(g.stacked_name);
      const auto dt = out_dtype(info.dtype, want);
      if (layout == ExpertLayout::kStacked) {
        out.push_back(pass(st, g.stacked_name, g.stacked_name, dt));
        continue;
      }
      const std::vector<int64_t> shape(info.shape.begin() + 1, info.shape.end());
      for (int64_t e = 0; e < info.shape[0]; ++e) {
        io::PendingTensor p;
        p.name = g.prefix + "." + std::to_string(e) + "." + g.proj + ".weight";
        p.dtype = dt;
        p.shape = shape;
        const std::string src = g.stacked_name;
        p.make = [st, src, e, dt] {
          auto w_FD = st->get(src)[e].to(io::dtype_to_torch(dt), /*non_blocking=*/false, /*copy=*/true);
          st->release(src);  // only this expert's pages were mapped in
          return w_FD;
        };
        out.push_back(std::move(p));
      }
      continue;
    }
    check_group(*st, g);
    const auto& first = st->info(g.names.begin()->second);
    const auto dt = out_dtype(first.dtype, want);
    if (layout == ExpertLayout::kPerExpert) {
      for (const auto& [e, name] : g.names) out.push_back(pass(st, name, name, dt));
      continue;
    }
    io::PendingTensor p;
    p.name = g.prefix + "." + g.proj;
    p.dtype = dt;
    p.shape = first.shape;
    p.shape.insert(p.shape.begin(), static_cast<int64_t>(g.names.size()));
    std::vector<std::string> names;
    for (const auto& [e, name] : g.names) names.push_back(name);
    p.make = [st, names, dt] {
      std::vector<torch::Tensor> parts;
      parts.reserve(names.size());
      for (const auto& n : names) parts.push_back(st->get(n));
      auto w_EFD = torch::stack(parts, 0).to(io::dtype_to_torch(dt));
      for (const auto& n : names) st->release(n);
      return w_EFD;
    };
    out.push_back(std::move(p));
  }
  return out;
}

void finish(std::vector<io::PendingTensor>& tensors, const std::string& tmp, uint64_t max_shard,
            ConvertReport& rep) {
  for (const auto& t : tensors) rep.bytes_out += t.nbytes();
  rep.tensors_out = static_cast<int64_t>(tensors.size());
  io::save_safetensors_sharded_streamed(tmp, tensors, max_shard, {{"format", "pt"}});
}

}  // namespace

ExpertLayout parse_expert_layout(const std::string& s) {
  if (s == "per-expert") return ExpertLayout::kPerExpert;
  if (s == "stacked") return ExpertLayout::kStacked;
  fail("", "--layout", "unknown layout '" + s + "'", "use per-expert or stacked");
}

namespace {

// Replaces every selected weight by its packed tensors; fills rep and the config block.
std::vector<io::PendingTensor> quantize_tensors(std::vector<io::PendingTensor> in, const QuantizeParams& q,
                                                ConvertReport& rep, json& block) {
  const auto f = quantize_format(q);
  const QuantSelector sel(q);
  std::vector<io::PendingTensor> out;
  std::set<std::string> cats;
  std::vector<std::string> split;  // expert tensors a pattern named apart from their module
  for (auto& t : in) {
    const std::string cat = quant_category(t.name);
    const bool shaped = t.shape.size() == 2 || (t.shape.size() == 3 && cat == "experts");
    if (shaped && is_float(t.dtype) && sel.splits_experts(t.name)) split.push_back(t.name);
    if (!shaped || !is_float(t.dtype) || !sel.selects(t.name)) {
      out.push_back(std::move(t));
      continue;
    }
    // Routed experts are packed all three projections or none (down's K is gate's N).
    if (!quantizable_shape(cat, t.shape, f)) {
      rep.not_quantized.push_back(t.name);
      out.push_back(std::move(t));
      continue;
    }
    cats.insert(quant_category(t.name));
    ++rep.quantized;
    for (auto& pq : quantized_pending(t, f)) out.push_back(std::move(pq));
  }
  if (!rep.not_quantized.empty())
    LOG_WARN(rep.not_quantized.size() << " selected weights have an input dimension that is not a multiple of the group "
                                      << f.group << " and stay unquantized, e.g. " << rep.not_quantized.front()
                                      << " (listed in config.json quantization.not_quantized; try --quantize-group 32; routed experts "
                                         "need both dimensions to fit)");
  if (!split.empty())
    LOG_WARN("routed experts are selected per layer by the name <prefix>.mlp.experts.gate_proj, so the patterns' "
             "choice for "
             << split.size() << " expert tensors (e.g. " << quant_selection_name(split.front())
             << " covers " << split.front() << ") does not apply: a layer's experts are packed all three projections "
                "or none (match or exclude e.g. '^model\\.layers\\.3\\.mlp\\.experts' to choose per layer)");
  if (rep.quantized == 0)
    fail("", "--quantize", "no tensor matches the selection" +
                               std::string(rep.not_quantized.empty() ? "" : " with a fitting input dimension"),
         "check --quantize-include / --quantize-exclude / --quantize-group");
  std::vector<std::string> order;
  for (const char* c : {"experts", "shared_experts", "dense_mlp", "attention", "lm_head"})
    if (cats.count(c)) order.push_back(c);
  block = quantization_block(q, order, rep.quantized, rep.not_quantized);
  return out;
}

}  // namespace

ConvertReport convert_checkpoint(const std::string& src, const std::string& dst, const ConvertParams& p) {
  const auto want = parse_out_dtype(p.dtype, "--dtype");
  auto st = std::make_shared<io::SafetensorsSet>(io::SafetensorsSet::open(src));
  ModelConfig::load(src);  // a readable config, or a clear error before any writing
  if (any_quantized(*st))
    fail(src, "config.json quantization", "the checkpoint is already quantized",
         "convert the bf16 (or f32) original instead");
  if (!p.quantize.format.empty()) {
    quantize_format(p.quantize);  // flag errors before any work
    QuantSelector check(p.quantize);
  }
  ConvertReport rep;
  auto tensors = relayout(st, p.layout, want, rep);
  json block;
  if (!p.quantize.format.empty()) tensors = quantize_tensors(std::move(tensors), p.quantize, rep, block);
  write_dir_atomically(src, dst, [&](const std::string& tmp) {
    finish(tensors, tmp, p.max_shard_bytes, rep);
    copy_side_files(src, tmp, want, p.quantize.format.empty() ? nullptr : &block);
  });
  return rep;
}



std::vector<std::string> llada2_export_mismatches(const ModelConfig& c) {
  std::vector<std::string> m;
  if (c.arch != Arch::kLlada2Moe) m.push_back("the model is LLaDA-MoE (llada), not llada2_moe");
  if (c.router_type == RouterType::kExpertChoice)
    m.push_back("expert-choice router: LLaDA2's code routes token choice only");
  if (c.score_function != ScoreFunction::kSigmoid)
    m.push_back("softmax router scores: LLaDA2's code always uses sigmoid scores");
  if (!c.norm_topk_prob) m.push_back("norm_topk_prob false: LLaDA2's code always renormalizes the top-k");
  if (c.moe_capacity_factor > 0)
    m.push_back("capacity factor " + std::to_string(c.moe_capacity_factor) + " drops tokens: LLaDA2 is dropless");
  if (c.expert_bias_in_gate) m.push_back("expert bias in the gate weights: LLaDA2 uses it for selection only");
  if (c.moe_intermediate_size > 0 && c.shared_expert_intermediate_size % c.moe_intermediate_size != 0)
    m.push_back("shared expert size is not a multiple of moe_intermediate_size (num_shared_experts)");
  if (c.tie_word_embeddings) m.push_back("tied embeddings: LLaDA2 checkpoints store lm_head separately");
  return m;
}

json llada2_config_json(const ModelConfig& c, const std::string& torch_dtype) {
  // Our llada2 config minus the ecdlm-only router keys, plus the keys LLaDA2's config class has.
  json j = c.to_json();
  for (const char* k : {"moe_router_type", "moe_capacity_factor", "moe_aux_loss_coeff", "moe_z_loss_coeff",
                        "moe_loss_free_bias_rate", "moe_enable_scaling_factor", "moe_capacity_schedule",
                        "moe_capacity_k_min", "moe_capacity_k_max", "moe_capacity_gaussian_sigma"})
    j.erase(k);
  j["auto_map"] = {{"AutoConfig", "configuration_llada2_moe.LLaDA2MoeConfig"},
                   {"AutoModel", "modeling_llada2_moe.LLaDA2MoeModel"},
                   {"AutoModelForCausalLM", "modeling_llada2_moe.LLaDA2MoeModelLM"}};
  for (const char* k : {"attention_dropout", "embedding_dropout", "output_dropout"}) j[k] = 0.0;
  j["initializer_range"] = 0.02;
  j["max_window_layers"] = c.num_hidden_layers;
  j["moe_router_enable_expert_bias"] = true;  // the export always writes expert_bias (zeros if unused)
  for (const char* k : {"norm_head", "norm_softmax", "output_router_logits", "use_cache", "use_sliding_window",
                        "using_split_qkv_in_self_attention"})
    j[k] = false;
  j["use_rmsnorm"] = true;
  j["score_function"] = "sigmoid";  // what LLaDA2's code computes whatever the key says
  j["torch_dtype"] = torch_dtype;
  // LLaDA2's generate() stops on pad_token_id (pad = EOS there).
  if (c.pad_token_id >= 0 || c.eos_token_id >= 0)
    j["pad_token_id"] = c.pad_token_id >= 0 ? c.pad_token_id : c.eos_token_id;
  return j;
}

ConvertReport export_llada2(const std::string& src, const std::string& dst, const ExportParams& p) {
  if (any_quantized(io::SafetensorsSet::open(src)))
    fail(src, "config.json quantization", "export writes bf16/f32 LLaDA2 checkpoints; this one is quantized",
         "export the bf16 original");
  if (p.dtype != "f32" && p.dtype != "bf16") fail("", "--dtype", "unknown dtype '" + p.dtype + "'", "use f32 or bf16");
  const auto want = parse_out_dtype(p.dtype, "--dtype");
  const std::string cfg_path = (fs::path(src) / "config.json").string();
  const ModelConfig c = ModelConfig::load(cfg_path);
  const auto mism = llada2_export_mismatches(c);
  if (c.arch != Arch::kLlada2Moe)
    fail(cfg_path, "model_type", "export writes llada2_moe models; this is LLaDA-MoE", "use convert instead");
  if (!mism.empty()) {
    std::string list;
    for (const auto& m : mism) list += "\n  - " + m;
    if (!p.allow_mismatch)
      fail(cfg_path, "", "LLaDA2's modeling code would compute a different function:" + list,
           "train with a config LLaDA2 supports, or pass --export-allow-mismatch to write it anyway");
    LOG_WARN(cfg_path << ": exporting although LLaDA2's code computes differently:" << list);
  }
  if (c.ecdlm_native)
    LOG_WARN(cfg_path << ": trained with bidirectional attention; LLaDA2's generate() uses a block-causal mask");
  auto st = std::make_shared<io::SafetensorsSet>(io::SafetensorsSet::open(src));
  check_checkpoint_header(c, *st, cfg_path);  // before expert_bias zeros of num_experts are made
  ConvertReport rep;
  auto tensors = relayout(st, ExpertLayout::kPerExpert, want, rep);
  // LLaDA2's gate always carries expert_bias; zeros select exactly as no bias.
  for (int64_t l = c.first_k_dense_replace; l < c.num_hidden_layers; ++l) {
    const std::string name = "model.layers." + std::to_string(l) + ".mlp.gate.expert_bias";
    if (!st->has(name)) tensors.push_back(io::pending(name, torch::zeros({c.num_experts}, torch::kFloat32)));
  }
  write_dir_atomically(src, dst, [&](const std::string& tmp) {
    finish(tensors, tmp, p.max_shard_bytes, rep);
    write_file_atomic((fs::path(tmp) / "config.json").string(),
                      llada2_config_json(c, torch_dtype_name(*want)).dump(2) + "\n");
    for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                          "merges.txt", "tokenizer.model", "generation_config.json"}) {
      auto from = fs::path(src) / f;
      if (fs::exists(from)) fs::copy_file(from, fs::path(tmp) / f, fs::copy_options::overwrite_existing);
    }
  });
  return rep;
}

// Every layer of a kind has the same tensors, so the placeholders need one dense and one MoE layer,
// not all of them: a model far beyond memory (LLaDA2.0-mini's 16.3B parameters) can still be
// written, one tensor at a time. Names and order are those of the whole model's export_tensors.
static std::vector<std::pair<std::string, std::vector<int64_t>>> init_shapes(const ModelConfig& cfg, const std::string& dst) {
  ModelConfig probe = cfg;
  const bool has_dense = cfg.first_k_dense_replace > 0, has_moe = cfg.num_hidden_layers > cfg.first_k_dense_replace;
  probe.first_k_dense_replace = has_dense ? 1 : 0;
  probe.num_hidden_layers = probe.first_k_dense_replace + (has_moe ? 1 : 0);
  check_model_fits_memory(probe, dst, 4.0, "init (the f32 placeholders of one dense and one MoE layer)");
  std::vector<std::pair<std::string, std::vector<int64_t>>> head, tail;
  std::vector<std::vector<std::pair<std::string, std::vector<int64_t>>>> layer(probe.num_hidden_layers);
  {
    SkipWeightInit skip;  // only names and shapes are needed: nothing is touched
    MoeDlm model(probe);
    for (const auto& [name, t] : export_tensors(model)) {
      const std::string pre = "model.layers.";
      if (name.rfind(pre, 0) == 0) {
        const size_t dot = name.find('.', pre.size());
        layer[std::stoll(name.substr(pre.size(), dot - pre.size()))].emplace_back(name.substr(dot), t.sizes().vec());
      } else {
        (layer.empty() || layer[0].empty() ? head : tail).emplace_back(name, t.sizes().vec());
      }
    }
  }
  auto out = head;
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l)
    for (const auto& [suffix, shape] : layer[cfg.is_moe_layer(l) ? probe.first_k_dense_replace : 0])
      out.emplace_back("model.layers." + std::to_string(l) + suffix, shape);
  out.insert(out.end(), tail.begin(), tail.end());
  return out;
}

ConvertReport init_checkpoint(const ModelConfig& cfg, const std::string& dst, const std::string& dtype,
                              uint64_t seed, uint64_t max_shard_bytes, const json* raw_config,
                              const RoutingInit* routing) {
  const auto want = parse_out_dtype(dtype, "--dtype");
  if (!want) fail("", "--dtype", "'keep' has no meaning for a new model", "use f32, bf16 or f16");
  cfg.validate(dst);
  const auto shapes = init_shapes(cfg, dst);
  auto gen = std::make_shared<torch::Generator>(at::detail::createCPUGenerator(seed));
  const auto dt = io::dtype_to_torch(*want);
  std::vector<io::PendingTensor> tensors;
  for (const auto& [name, shape] : shapes) {
    io::PendingTensor p;
    p.name = name;
    p.shape = shape;
    const bool is_bias = ends_with(name, "expert_bias");
    p.dtype = is_bias ? io::DType::F32 : *want;
    auto init = param_init(name, cfg.num_hidden_layers);
    double bias_a = 0.0;
    if (routing) {
      if (ends_with(name, "word_embeddings.weight") || ends_with(name, "embed_tokens.weight"))
        init.std = routing->embedding_std;
      if (ends_with(name, "mlp.gate.weight")) init.std = routing->router_std(cfg.hidden_size);
      if (is_bias) bias_a = routing->popularity_bias;
    }
    p.make = [gen, shape = shape, is_bias, bias_a, init, dt] {
      if (is_bias) return bias_a == 0.0 ? torch::zeros(shape, torch::kFloat32) : popularity_bias(shape[0], bias_a, *gen);
      if (init.ones) return torch::ones(shape, dt);
      return at::normal(0.0, init.std, shape, *gen).to(dt);
    };
    tensors.push_back(std::move(p));
  }
  ConvertReport rep;
  rep.tensors_in = static_cast<int64_t>(tensors.size());
  write_dir_atomically("", dst, [&](const std::string& tmp) {
    finish(tensors, tmp, max_shard_bytes, rep);
    json j = raw_config ? *raw_config : cfg.to_json();
    j["torch_dtype"] = torch_dtype_name(*want);
    write_file_atomic((fs::path(tmp) / "config.json").string(), j.dump(2) + "\n");
  });
  return rep;
}

}  // namespace ecdlm
