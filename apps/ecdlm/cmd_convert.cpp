// `ecdlm convert` (expert layout / dtype / --quantize), `ecdlm export` (LLaDA2 HF directory) and
// `ecdlm init` (a random model dir from a config): streaming checkpoint writers.
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "cli_util.h"
#include "commands.h"
#include "ecdlm/model/convert.h"
#include "ecdlm/model/init.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/fs.h"
#include "ecdlm/util/log.h"

namespace ecdlm::cli {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

struct ConvertArgs {
  std::string src, dst, layout = "per-expert", dtype = "keep", shard = "5GB", config;
  std::string quantize, q_include, q_exclude;
  int64_t q_group = 32;
  bool q_lm_head = false;
  uint64_t seed = 1234;
  std::string init_routing = "plain";
  double popularity = RoutingInit{}.popularity_bias;
  bool allow_mismatch = false, json = false;
};

int report(const ConvertArgs& a, const ConvertReport& r, const std::string& what) {
  json j = {{"output", a.dst}, {"tensors_in", r.tensors_in}, {"tensors_out", r.tensors_out},
            {"bytes_out", r.bytes_out}, {"expert_groups", r.expert_groups}};
  if (!a.quantize.empty()) {
    j["quantized"] = r.quantized;
    j["not_quantized"] = r.not_quantized;
  }
  if (a.json) {
    std::cout << j.dump(2) << "\n";
  } else {
    std::cout << what << " " << a.dst << ": " << r.tensors_out << " tensors, "
              << static_cast<double>(r.bytes_out) / 1e9 << " GB";
    if (!a.quantize.empty()) std::cout << ", " << r.quantized << " weights quantized (" << a.quantize << ")";
    std::cout << "\n";
  }
  return 0;
}

std::vector<std::string> split_patterns(const std::string& s) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (!s.empty() && pos <= s.size()) {
    const size_t end = std::min(s.find(',', pos), s.size());
    out.push_back(s.substr(pos, end - pos));
    pos = end + 1;
  }
  return out;
}

void require_dir(const std::string& d) {
  if (!fs::is_directory(d)) fail(d, "", "not a directory", "pass a model directory to -m");
}

}  // namespace

void register_convert(CLI::App& app) {
  {
    auto a = std::make_shared<ConvertArgs>();
    auto* sub = app.add_subcommand(
        "convert", "Rewrite a checkpoint in another expert layout or dtype (streams one tensor at a time)");
    sub->add_option("-m,--model", a->src, "Source model directory")->required();
    sub->add_option("-o,--output", a->dst, "Output directory (written atomically)")->required();
    sub->add_option("--layout", a->layout, "per-expert (HF: mlp.experts.<e>.<proj>.weight) or stacked "
                                           "(mlp.experts.<proj> [E, F, D])")
        ->check(CLI::IsMember({"per-expert", "stacked"}))
        ->capture_default_str();
    sub->add_option("--dtype", a->dtype, "keep, f32, bf16 or f16 (floating tensors)")
        ->check(CLI::IsMember({"keep", "f32", "bf16", "f16"}))
        ->capture_default_str();
    sub->add_option("--max-shard-size", a->shard, "Largest shard (e.g. 5GB, 500MB)")->capture_default_str();
    sub->add_option("--quantize", a->quantize,
                    "Pack linear weights: q8 (int8) or q4 (4-bit, scale + minimum); q4s (4-bit, scale only). "
                    "Default set: routed and shared experts, dense MLPs, attention projections")
        ->check(CLI::IsMember({"q8", "q4", "q4s"}));
    sub->add_option("--quantize-group", a->q_group, "Inputs per scale: 32 or 64")
        ->check(CLI::IsMember({32, 64}))
        ->capture_default_str();
    sub->add_option("--quantize-include", a->q_include,
                    "Comma-separated categories (experts, shared_experts, dense_mlp, attention, lm_head) or regexes "
                    "searched in tensor names: quantize only these (default: the default set)");
    sub->add_option("--quantize-exclude", a->q_exclude, "Comma-separated categories or regexes to keep unquantized");
    sub->add_flag("--quantize-lm-head", a->q_lm_head, "Quantize lm_head too (kept bf16 by default)");
    sub->add_flag("--json", a->json, "Print the report as JSON");
    set_runner(sub, [a, sub] {
      require_dir(a->src);
      if (a->quantize.empty() && sub->count("--quantize-group") > 0)
        fail("", "--quantize-group", "given without --quantize", "add --quantize q8 or --quantize q4");
      ConvertParams p;
      p.layout = parse_expert_layout(a->layout);
      p.dtype = a->dtype;
      p.max_shard_bytes = parse_size(a->shard, "--max-shard-size");
      if (a->quantize.empty() && (!a->q_include.empty() || !a->q_exclude.empty() || a->q_lm_head))
        fail("", "--quantize-include/--quantize-exclude/--quantize-lm-head", "given without --quantize",
             "add --quantize q8 or --quantize q4");
      p.quantize.format = a->quantize;
      p.quantize.group = a->q_group;
      p.quantize.include = split_patterns(a->q_include);
      p.quantize.exclude = split_patterns(a->q_exclude);
      p.quantize.lm_head = a->q_lm_head;
      return report(*a, convert_checkpoint(a->src, a->dst, p), "converted");
    });
  }
  {
    auto a = std::make_shared<ConvertArgs>();
    a->dtype = "bf16";
    auto* sub = app.add_subcommand(
        "export", "Write an ecdlm token-choice model as an LLaDA2 Hugging Face directory (llada2_moe)");
    sub->add_option("-m,--model", a->src, "ecdlm model directory")->required();
    sub->add_option("-o,--output", a->dst, "Output directory (written atomically)")->required();
    sub->add_option("--dtype", a->dtype, "f32 or bf16")->check(CLI::IsMember({"f32", "bf16"}))->capture_default_str();
    sub->add_option("--max-shard-size", a->shard, "Largest shard (e.g. 5GB, 500MB)")->capture_default_str();
    sub->add_flag("--export-allow-mismatch", a->allow_mismatch,
                  "Write even if LLaDA2's modeling code would compute a different function (listed)");
    sub->add_flag("--json", a->json, "Print the report as JSON");
    set_runner(sub, [a] {
      require_dir(a->src);
      ExportParams p;
      p.dtype = a->dtype;
      p.max_shard_bytes = parse_size(a->shard, "--max-shard-size");
      p.allow_mismatch = a->allow_mismatch;
      return report(*a, export_llada2(a->src, a->dst, p), "exported");
    });
  }
  {
    auto a = std::make_shared<ConvertArgs>();
    a->dtype = "f32";
    auto* sub = app.add_subcommand("init", "Write a randomly initialized model directory for a config");
    sub->add_option("-c,--config", a->config, "config.json (HF keys), or a run config with a \"model\" section")
        ->required();
    sub->add_option("-o,--output", a->dst, "Output directory (written atomically)")->required();
    sub->add_option("--dtype", a->dtype, "f32, bf16 or f16")->check(CLI::IsMember({"f32", "bf16", "f16"}))
        ->capture_default_str();
    sub->add_option("-s,--seed", a->seed, "Initialization seed")->capture_default_str();
    sub->add_option("--max-shard-size", a->shard, "Largest shard (e.g. 5GB, 500MB)")->capture_default_str();
    sub->add_option("--init-routing", a->init_routing,
                    "plain: every weight N(0, 0.02) (a training start); calibrated: the synthetic benchmark "
                    "recipe (embeddings N(0, 1), a sharper router, an expert-popularity bias): with sampled output "
                    "(--temperature 1) a LLaDA2.0-mini-shaped model then touches ~69 experts per 32-token block "
                    "and layer, as the real one does")
        ->check(CLI::IsMember({"plain", "calibrated"}))
        ->capture_default_str();
    auto* pop = sub->add_option("--init-popularity-bias", a->popularity,
                                "With --init-routing calibrated: a in the expert_bias -a ln(1 + rank) "
                                "(0 = none; larger concentrates routing on fewer experts)")
                    ->check(Finite)->check(CLI::Range(0.0, 10.0))
                    ->capture_default_str();
    sub->add_flag("--json", a->json, "Print the report as JSON");
    set_runner(sub, [a, pop] {
      if (pop->count() > 0 && a->init_routing != "calibrated")
        throw UserError("init: --init-popularity-bias applies only with --init-routing calibrated");
      const json raw = read_json_file(a->config);
      const bool run_cfg = raw.is_object() && raw.contains("model");
      const ModelConfig cfg = run_cfg ? load_run_config(a->config).model : ModelConfig::load(a->config);
      RoutingInit routing;
      routing.popularity_bias = a->popularity;
      if (a->init_routing == "calibrated" && !cfg.moe_router_enable_expert_bias && a->popularity != 0.0)
        throw UserError("init: " + a->config + " has moe_router_enable_expert_bias false, so there is no expert_bias "
                        "to hold the popularity bias: pass --init-popularity-bias 0, or enable the bias");
      return report(*a, init_checkpoint(cfg, a->dst, a->dtype, a->seed, parse_size(a->shard, "--max-shard-size"),
                                        run_cfg ? nullptr : &raw, a->init_routing == "calibrated" ? &routing : nullptr),
                    "initialized");
    });
  }
}

}  // namespace ecdlm::cli
