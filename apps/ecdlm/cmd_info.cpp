// `ecdlm info`: architecture, parameter counts, expert layout and checkpoint files of a model dir.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>

#include "commands.h"
#include "inference_opts.h"
#include "ecdlm/io/safetensors.h"
#include "ecdlm/model/checkpoint_check.h"
#include "ecdlm/model/model_dir.h"
#include "ecdlm/model/moe_dlm.h"
#include "ecdlm/moe/capacity.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/fs.h"
#include "ecdlm/util/log.h"
#include "ecdlm/util/strings.h"

namespace ecdlm::cli {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

// Above this many parameters the counts come from the config alone: building a MoeDlm to ask it
// would allocate (and initialize) the whole model.
constexpr int64_t kMaxInstantiate = 250'000'000;

struct ParamCounts {
  int64_t total = 0, active = 0;
  int64_t embedding = 0, lm_head = 0, attention = 0, norms = 0, dense_mlp = 0;
  int64_t router = 0, experts = 0, shared_experts = 0;
  int64_t per_expert = 0;  // one routed expert of one layer (gate + up + down)
};

// Mirrors the module tree of MoeDlm (parameters only; expert_bias is a buffer) and the per-token
// active count of MoeDlm::num_active_parameters.
ParamCounts count_from_config(const ModelConfig& c) {
  ParamCounts n;
  const int64_t D = c.hidden_size;
  n.embedding = c.vocab_size * D;
  n.lm_head = c.vocab_size * D;
  n.norms = D;  // final norm
  const int64_t attn = D * (c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim +
                       c.num_attention_heads * c.head_dim * D;
  n.per_expert = 3 * c.moe_intermediate_size * D;
  n.active = c.vocab_size * D * 2;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    n.attention += attn;
    n.norms += 2 * D + (c.use_qk_norm ? 2 * c.head_dim : 0);
    n.active += attn;
    if (c.is_moe_layer(l)) {
      n.router += c.num_experts * D;
      n.experts += c.num_experts * n.per_expert;
      n.shared_experts += 3 * D * c.shared_expert_intermediate_size;
      n.active += c.num_experts * D + c.num_experts_per_tok * n.per_expert +
                  3 * D * c.shared_expert_intermediate_size;
    } else {
      n.dense_mlp += 3 * D * c.intermediate_size;
      n.active += 3 * D * c.intermediate_size;
    }
  }
  n.total = n.embedding + n.lm_head + n.norms + n.attention + n.dense_mlp + n.router + n.experts +
            n.shared_experts;
  return n;
}

std::string human(double v, const char* unit = "") {
  const char* suffix[] = {"", "K", "M", "G", "T"};
  int i = 0;
  while (v >= 1000.0 && i < 4) {
    v /= 1000.0;
    ++i;
  }
  char buf[48];
  std::snprintf(buf, sizeof(buf), i ? "%.2f%s%s" : "%.0f%s%s", v, suffix[i], unit);
  return buf;
}

std::string human_bytes(double b) {
  const char* suffix[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int i = 0;
  while (b >= 1024.0 && i < 4) {
    b /= 1024.0;
    ++i;
  }
  char buf[48];
  std::snprintf(buf, sizeof(buf), i ? "%.2f %s" : "%.0f %s", b, suffix[i]);
  return buf;
}

// What each inference routing policy needs resident, per MoE layer and per forward of one decoding
// block (32 tokens): the non-expert weights are always read; routed experts only when routed to.
// The mapped loader never pages in the rest, so these are the working sets, not the file size.
json memory_json(const ModelConfig& c, const ParamCounts& n, const json& ck) {
  // The checkpoint's main weight dtype (most elements; small f32 buffers do not count), else bf16.
  int64_t bytes_per = ck.value("present", false) && ck.value("main_dtype", "BF16") == "F32" ? 4 : 2;
  const int64_t block = 32, E = c.num_experts, L = c.num_moe_layers();
  int64_t expert_bytes = n.per_expert * bytes_per;
  int64_t always = (n.total - n.experts) * bytes_per, total = n.total * bytes_per;
  std::string weights = bytes_per == 2 ? "bf16" : "f32";
  if (ck.contains("quantization") && L * E > 0) {
    // convert --quantize: the bytes as stored (packed and bf16 tensors alike): a routed expert the
    // experts' mean (a layer left bf16 by --quantize-exclude included), the rest always read.
    const auto& q = ck["quantization"];
    const int64_t experts = ck["expert_bytes"].get<int64_t>();
    total = ck["tensor_bytes"].get<int64_t>();
    expert_bytes = experts / (L * E);
    always = std::max<int64_t>(0, total - experts);
    weights = q.value("format", std::string("quantized")) + " packed, bf16 rest";
    bytes_per = 2;  // activations and the KV cache stay bf16
  }
  auto policy = [&](const std::string& rule, int64_t lo, int64_t hi) {
    lo = std::min(lo, E);
    hi = std::min(hi, E);
    return json{{"rule", rule},
                {"experts_per_layer_min", lo},
                {"experts_per_layer_max", hi},
                {"bytes_per_forward_min", always + L * lo * expert_bytes},
                {"bytes_per_forward_max", always + L * hi * expert_bytes}};
  };
  json m;
  m["bytes_per_weight"] = bytes_per;
  m["weights"] = weights;
  m["weights_total_bytes"] = total;
  m["non_expert_bytes"] = always;
  m["bytes_per_expert"] = expert_bytes;
  m["block_tokens"] = block;
  m["kv_cache_bytes_per_token"] =
      c.num_hidden_layers * 2 * c.num_key_value_heads * c.head_dim * bytes_per;
  json p;
  p["token"] = policy("each token's top-k: k to min(E, block * k) experts", c.num_experts_per_tok,
                      block * c.num_experts_per_tok);
  p["topk"] = policy("top-4 cap: 4 to min(E, block * 4) experts", 4, block * 4);
  p["block"] = policy("dMoE coreset: G (16) to E experts; 14.6 of 256 on LLaDA2.0-mini in the paper", 16, E);
  p["ec"] = policy("expert choice: every expert takes C tokens, so all E", E, E);
  m["per_policy"] = p;
  return m;
}

// What the inference commands will do with this directory when no flag says otherwise.
json inference_json(const std::string& dir, const ModelConfig& c, bool has_ckpt) {
  json inf;
  const bool bidir = trained_bidirectional(c);
  inf["attention"] = bidir ? "bidirectional" : "block-causal";
  inf["decoder"] = bidir ? "llada" : "llada2";
  inf["dtype"] = has_ckpt ? default_dtype(dir) : "";
  const auto mask = resolve_mask_id(dir, c), eos = resolve_eos_id(dir, c);
  inf["mask_id"] = {{"id", mask.id}, {"source", mask.source}};
  inf["eos_id"] = {{"id", eos.id}, {"source", eos.source}};
  const auto r = default_routing(c);
  const std::string src = routing_source(c);
  inf["routing"] = {{"policy", moe::routing_policy_name(r.policy)}, {"source", src},
                    {"why", describe_routing(r, c, src)}};
  if (r.policy == moe::RoutingPolicy::kBlock) inf["routing"]["block_top_p"] = r.block_top_p;
  return inf;
}

json build_info(const std::string& dir) {
  const std::string cfg_path =
      fs::is_directory(dir) ? (fs::path(dir) / "config.json").string() : dir;
  const json raw = read_json_file(cfg_path);
  const ModelConfig c = ModelConfig::load(cfg_path);
  json j;
  j["model_dir"] = dir;
  j["config"] = cfg_path;

  json a;
  a["arch"] = to_string(c.arch);
  a["model_type"] = raw.value("model_type", to_string(c.arch));
  a["router_type"] = to_string(c.router_type);
  a["num_hidden_layers"] = c.num_hidden_layers;
  a["dense_layers"] = c.first_k_dense_replace;
  a["moe_layers"] = c.num_moe_layers();
  a["hidden_size"] = c.hidden_size;
  a["num_attention_heads"] = c.num_attention_heads;
  a["num_key_value_heads"] = c.num_key_value_heads;
  a["head_dim"] = c.head_dim;
  a["rotary_dim"] = c.rotary_dim();
  a["rope_theta"] = c.rope_theta;
  a["use_qk_norm"] = c.use_qk_norm;
  a["intermediate_size"] = c.intermediate_size;
  a["num_experts"] = c.num_experts;
  a["num_experts_per_tok"] = c.num_experts_per_tok;
  a["moe_intermediate_size"] = c.moe_intermediate_size;
  a["shared_expert_intermediate_size"] = c.shared_expert_intermediate_size;
  a["n_group"] = c.n_group;
  a["topk_group"] = c.topk_group;
  a["score_function"] = c.score_function == ScoreFunction::kSigmoid ? "sigmoid" : "softmax";
  a["routed_scaling_factor"] = c.routed_scaling_factor;
  a["expert_bias"] = c.moe_router_enable_expert_bias;
  a["vocab_size"] = c.vocab_size;
  a["max_position_embeddings"] = c.max_position_embeddings;
  a["mask_token_id"] = c.mask_token_id;
  a["eos_token_id"] = c.eos_token_id;
  a["pad_token_id"] = c.pad_token_id;
  j["architecture"] = a;

  json cap;
  if (c.router_type == RouterType::kExpertChoice) {
    const double k = static_cast<double>(c.num_experts_per_tok);
    moe::CapacitySchedule s(moe::parse_schedule(c.moe_capacity_schedule), k,
                            c.moe_capacity_k_min > 0 ? c.moe_capacity_k_min : k,
                            c.moe_capacity_k_max > 0 ? c.moe_capacity_k_max : k,
                            c.moe_capacity_gaussian_sigma);
    cap["schedule"] = c.moe_capacity_schedule;
    cap["k_min"] = s.k_min();
    cap["k_max"] = s.k_max();
    json kr = json::object();
    for (float r : {0.1f, 0.25f, 0.5f, 0.75f, 1.0f}) {
      char key[16];
      std::snprintf(key, sizeof(key), "%.2f", r);
      kr[key] = s.k_for(r);
    }
    cap["k_of_r"] = kr;
    cap["rule"] = "C = max(floor(L * k(r) / E), 1) per sequence; r = #mask / L";
  } else {
    cap["capacity_factor"] = c.moe_capacity_factor;
    cap["dropless"] = c.moe_capacity_factor <= 0;
  }
  j["capacity"] = cap;

  ParamCounts n = count_from_config(c);
  json pc;
  std::string source = "config";
  if (n.total <= kMaxInstantiate) {
    MoeDlm model(c);
    if (model->num_parameters() != n.total)
      LOG_DEBUG("info: config count " << n.total << " != module count " << model->num_parameters());
    n.total = model->num_parameters();
    n.active = model->num_active_parameters();
    source = "MoeDlm";
  }
  pc["total"] = n.total;
  pc["active_per_token"] = n.active;
  pc["source"] = source;
  pc["embedding"] = n.embedding;
  pc["lm_head"] = n.lm_head;
  pc["attention"] = n.attention;
  pc["norms"] = n.norms;
  pc["dense_mlp"] = n.dense_mlp;
  pc["router"] = n.router;
  pc["routed_experts"] = n.experts;
  pc["shared_experts"] = n.shared_experts;
  pc["routed_expert_share"] = n.total > 0 ? static_cast<double>(n.experts) / n.total : 0.0;
  j["parameters"] = pc;

  json ex;
  ex["layout"] = "in memory: stacked per layer, gate_proj/up_proj [E, F, D], down_proj [E, D, F]";
  ex["shape_EFD"] = {c.num_experts, c.moe_intermediate_size, c.hidden_size};
  ex["params_per_expert"] = n.per_expert;
  ex["bytes_per_expert_f32"] = n.per_expert * 4;
  ex["bytes_per_expert_bf16"] = n.per_expert * 2;
  ex["bytes_per_layer_f32"] = n.per_expert * c.num_experts * 4;
  j["experts"] = ex;

  json ck;
  const bool has_ckpt =
      fs::is_directory(dir) && (fs::exists(fs::path(dir) / "model.safetensors") ||
                                fs::exists(fs::path(dir) / "model.safetensors.index.json"));
  ck["present"] = has_ckpt;
  if (has_ckpt) {
    auto st = io::SafetensorsSet::open(dir);
    check_checkpoint_header(c, st, cfg_path);  // a config that disagrees with its weights is an error
    json files = json::array();
    for (const auto& f : st.files())
      files.push_back({{"path", f->path()}, {"bytes", fs::file_size(f->path())}});
    std::map<std::string, int64_t> dtypes, elements;
    int64_t numel = 0;
    for (const auto& name : st.names()) {
      const auto& t = st.info(name);
      dtypes[io::dtype_name(t.dtype)] += 1;
      elements[io::dtype_name(t.dtype)] += t.numel();
      numel += t.numel();
    }
    ck["main_dtype"] = std::max_element(elements.begin(), elements.end(), [](const auto& a, const auto& b) {
                         return a.second < b.second;
                       })->first;
    ck["source"] = st.source();
    ck["files"] = files;
    ck["tensor_bytes"] = st.total_bytes();
    ck["tensors"] = st.names().size();
    ck["elements"] = numel;
    ck["dtypes"] = dtypes;
    ck["expert_layout"] = expert_file_layout(st);
    // convert --quantize: the config block plus what the file holds packed; the routed experts'
    // bytes as stored (either layout), for the memory estimate.
    int64_t packed = 0, packed_weights = 0, expert_bytes = 0;
    for (const auto& name : st.names()) {
      const auto bytes = static_cast<int64_t>(st.info(name).nbytes());
      if (ends_with(name, ".qweight") || ends_with(name, ".scales") || ends_with(name, ".mins")) {
        packed += bytes;
        packed_weights += ends_with(name, ".qweight") ? 1 : 0;
      }
      if (name.find(".mlp.experts.") != std::string::npos) expert_bytes += bytes;
    }
    ck["expert_bytes"] = expert_bytes;
    if (packed_weights > 0) {
      const json raw = fs::exists(cfg_path) ? read_json_file(cfg_path) : json::object();
      json q = raw.is_object() && raw.contains("quantization") ? raw["quantization"] : json::object();
      if (!q.contains("format"))
        fail(cfg_path, "quantization", "the checkpoint holds packed weights but config.json has no quantization block",
             "use the config.json ecdlm convert --quantize wrote");
      q["packed_tensors"] = packed_weights;
      q["packed_bytes"] = packed;
      ck["quantization"] = q;
    }
  }
  const std::string model_dir = fs::is_directory(dir) ? dir : fs::path(cfg_path).parent_path().string();
  ck["tokenizer"] = tokenizer_files(model_dir);
  j["checkpoint"] = ck;
  j["memory"] = memory_json(c, n, ck);
  j["inference"] = inference_json(model_dir, c, has_ckpt);
  return j;
}

void print_human(const json& j) {
  auto row = [](const std::string& k, const std::string& v) {
    std::printf("  %-28s %s\n", k.c_str(), v.c_str());
  };
  auto s = [](const json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); };
  const auto& a = j["architecture"];
  std::printf("model %s\n", j["model_dir"].get<std::string>().c_str());
  std::printf("architecture\n");
  row("model_type", s(a["model_type"]) + " (" + s(a["arch"]) + ")");
  row("router", s(a["router_type"]) + ", " + s(a["score_function"]) + " scores" +
                    (a["expert_bias"].get<bool>() ? ", expert bias" : ""));
  row("layers", s(a["num_hidden_layers"]) + " (" + s(a["dense_layers"]) + " dense, " +
                    s(a["moe_layers"]) + " MoE)");
  row("hidden", s(a["hidden_size"]));
  row("heads / kv heads / head_dim",
      s(a["num_attention_heads"]) + " / " + s(a["num_key_value_heads"]) + " / " + s(a["head_dim"]));
  row("rotary dim / theta", s(a["rotary_dim"]) + " / " + s(a["rope_theta"]));
  row("experts / top-k", s(a["num_experts"]) + " / " + s(a["num_experts_per_tok"]) + " (groups " +
                             s(a["n_group"]) + ", keep " + s(a["topk_group"]) + ")");
  row("moe / shared / dense inter", s(a["moe_intermediate_size"]) + " / " +
                                        s(a["shared_expert_intermediate_size"]) + " / " +
                                        s(a["intermediate_size"]));
  row("vocab", s(a["vocab_size"]));
  auto id = [&](const json& v) { return v.get<int64_t>() < 0 ? std::string("-") : s(v); };
  row("mask / eos / pad id (config)",
      id(a["mask_token_id"]) + " / " + id(a["eos_token_id"]) + " / " + id(a["pad_token_id"]));
  const auto& cap = j["capacity"];
  if (cap.contains("schedule")) {
    std::string kr;
    for (auto it = cap["k_of_r"].begin(); it != cap["k_of_r"].end(); ++it)
      kr += (kr.empty() ? "" : ", ") + std::string("k(") + it.key() + ")=" + s(it.value());
    if (s(cap["schedule"]) == "static")
      row("capacity schedule", "static, k " + s(cap["k_max"]) + "; " + s(cap["rule"]));
    else
      row("capacity schedule", s(cap["schedule"]) + " [k " + s(cap["k_min"]) + ".." +
                                   s(cap["k_max"]) + "]: " + kr);
  } else {
    row("capacity factor", cap["dropless"].get<bool>() ? "dropless" : s(cap["capacity_factor"]));
  }
  const auto& p = j["parameters"];
  std::printf("parameters (%s)\n", s(p["source"]).c_str());
  row("total", human(p["total"].get<double>()) + " (" + s(p["total"]) + ")");
  row("active per token", human(p["active_per_token"].get<double>()) + " (" +
                              s(p["active_per_token"]) + ")");
  char share[32];
  std::snprintf(share, sizeof(share), "%.1f%%", 100.0 * p["routed_expert_share"].get<double>());
  row("routed experts", human(p["routed_experts"].get<double>()) + " (" + share + " of total)");
  row("shared experts", human(p["shared_experts"].get<double>()));
  row("attention / dense mlp", human(p["attention"].get<double>()) + " / " +
                                   human(p["dense_mlp"].get<double>()));
  row("embedding / lm_head", human(p["embedding"].get<double>()) + " / " +
                                 human(p["lm_head"].get<double>()));
  const auto& ex = j["experts"];
  std::printf("experts\n");
  row("layout", s(ex["layout"]));
  row("per layer [E, F, D]", s(ex["shape_EFD"]));
  row("one expert", s(ex["params_per_expert"]) + " params, " +
                        human_bytes(ex["bytes_per_expert_f32"].get<double>()) + " f32, " +
                        human_bytes(ex["bytes_per_expert_bf16"].get<double>()) + " bf16");
  const auto& ck = j["checkpoint"];
  std::printf("checkpoint\n");
  if (!ck["present"].get<bool>()) {
    row("weights", "none (no model.safetensors or index)");
  } else {
    for (const auto& f : ck["files"])
      row(fs::path(f["path"].get<std::string>()).filename().string(),
          human_bytes(f["bytes"].get<double>()));
    std::string dt;
    for (auto it = ck["dtypes"].begin(); it != ck["dtypes"].end(); ++it)
      dt += (dt.empty() ? "" : ", ") + it.key() + " x" + s(it.value());
    row("tensors", s(ck["tensors"]) + " (" + dt + "), " + human(ck["elements"].get<double>()) +
                       " elements, " + human_bytes(ck["tensor_bytes"].get<double>()));
    const std::string lay = s(ck["expert_layout"]);
    row("experts in the file", lay == "per-expert" ? "per-expert (mlp.experts.E.{gate,up,down}_proj.weight)"
                               : lay == "stacked"  ? "stacked (mlp.experts.{gate,up,down}_proj, ecdlm convert)"
                                                   : lay);
    if (ck.contains("quantization")) {
      const auto& q = ck["quantization"];
      std::string what;
      for (const auto& c : q["quantized"]) what += (what.empty() ? "" : ", ") + c.get<std::string>();
      row("quantization", s(q["format"]) + " (" + what + "): " + s(q["packed_tensors"]) + " weights, " +
                              human_bytes(q["packed_bytes"].get<double>()) + " packed");
    }
  }
  std::string toks;
  for (const auto& f : ck["tokenizer"]) toks += (toks.empty() ? "" : ", ") + f.get<std::string>();
  row("tokenizer", toks.empty() ? "none (generate and logits --text need --tokenizer)" : toks);
  const auto& inf = j["inference"];
  std::printf("inference defaults (generate, logits, eval)\n");
  row("decoder (auto)", s(inf["decoder"]) + " (trained " + s(inf["attention"]) + ")");
  row("dtype", inf["dtype"].get<std::string>().empty() ? "- (no weights)"
                                                       : s(inf["dtype"]) + " (the stored dtype; --dtype to change)");
  auto sid = [&](const json& v) {
    return v["id"].get<int64_t>() < 0 ? std::string("none") : s(v["id"]) + " (" + s(v["source"]) + ")";
  };
  row("mask id", sid(inf["mask_id"]));
  row("eos id", sid(inf["eos_id"]));
  row("routing", s(inf["routing"]["why"]));
  const auto& m = j["memory"];
  std::printf("memory (%s weights, mapped: only what a forward reads is paged in)\n", s(m["weights"]).c_str());
  row("all weights", human_bytes(m["weights_total_bytes"].get<double>()));
  row("non-expert (always read)", human_bytes(m["non_expert_bytes"].get<double>()));
  row("KV cache per token", human_bytes(m["kv_cache_bytes_per_token"].get<double>()));
  for (const char* pol : {"token", "topk", "block", "ec"}) {  // * = this model's default
    const auto& q = m["per_policy"][pol];
    const bool dflt = s(inf["routing"]["policy"]) == pol;
    row(std::string("--moe-routing ") + pol + (dflt ? " *" : ""),
        human_bytes(q["bytes_per_forward_min"].get<double>()) + " .. " +
            human_bytes(q["bytes_per_forward_max"].get<double>()) + " per 32-token forward (" +
            s(q["experts_per_layer_min"]) + ".." + s(q["experts_per_layer_max"]) + " experts/layer)");
  }
}

}  // namespace

void register_info(CLI::App& app) {
  auto* sub = app.add_subcommand(
      "info", "Show a model's architecture, parameter counts, expert layout and checkpoint files");
  auto dir = std::make_shared<std::string>();
  auto as_json = std::make_shared<bool>(false);
  sub->add_option("-m,--model", *dir, "Model directory (or its config.json)")->required();
  sub->add_flag("--json", *as_json, "Print the report as JSON");
  set_runner(sub, [dir, as_json]() {
    if (!fs::exists(*dir))
      fail(*dir, "", "not found", "pass a model directory to -m");
    const json j = build_info(*dir);
    if (*as_json)
      std::cout << j.dump(2) << "\n";
    else
      print_human(j);
    return 0;
  });
}

}  // namespace ecdlm::cli
