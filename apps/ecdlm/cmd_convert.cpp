// `ecdlm convert` (expert layout / dtype), `ecdlm export` (LLaDA2 HF directory) and
// `ecdlm init` (a random model dir from a config): streaming checkpoint writers.
#include <filesystem>
#include <iostream>
#include <memory>

#include "cli_util.h"
#include "commands.h"
#include "ecdlm/model/convert.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/fs.h"
#include "ecdlm/util/log.h"

namespace ecdlm::cli {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

struct ConvertArgs {
  std::string src, dst, layout = "per-expert", dtype = "keep", shard = "5GB", config;
  uint64_t seed = 1234;
  bool allow_mismatch = false, json = false;
};

int report(const ConvertArgs& a, const ConvertReport& r, const std::string& what) {
  json j = {{"output", a.dst}, {"tensors_in", r.tensors_in}, {"tensors_out", r.tensors_out},
            {"bytes_out", r.bytes_out}, {"expert_groups", r.expert_groups}};
  if (a.json) {
    std::cout << j.dump(2) << "\n";
  } else {
    std::cout << what << " " << a.dst << ": " << r.tensors_out << " tensors, "
              << static_cast<double>(r.bytes_out) / 1e9 << " GB\n";
  }
  return 0;
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
    sub->add_flag("--json", a->json, "Print the report as JSON");
    set_runner(sub, [a] {
      require_dir(a->src);
      ConvertParams p;
      p.layout = parse_expert_layout(a->layout);
      p.dtype = a->dtype;
      p.max_shard_bytes = parse_size(a->shard, "--max-shard-size");
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
    sub->add_flag("--json", a->json, "Print the report as JSON");
    set_runner(sub, [a] {
      const json raw = read_json_file(a->config);
      const bool run_cfg = raw.is_object() && raw.contains("model");
      const ModelConfig cfg = run_cfg ? load_run_config(a->config).model : ModelConfig::load(a->config);
      return report(*a, init_checkpoint(cfg, a->dst, a->dtype, a->seed, parse_size(a->shard, "--max-shard-size"),
                                        run_cfg ? nullptr : &raw),
                    "initialized");
    });
  }
}

}  // namespace ecdlm::cli
