#include "ecdlm/bench/generate_plot.h"

#include <algorithm>
#include <filesystem>
#include <iomanip>
#include <map>
#include <set>
#include <sstream>

#include "ecdlm/util/error.h"

namespace ecdlm::bench {

std::string policy_label(const std::string& routing, double top_p, int64_t block_min_experts) {
  if (routing != "block") return routing;
  std::ostringstream s;
  s << "block p=" << std::fixed << std::setprecision(1) << top_p << " G=" << block_min_experts;
  return s.str();
}

std::vector<Series> plot_series(const std::vector<GenBenchRow>& rows) {
  std::set<std::string> kernels;
  for (const auto& r : rows) kernels.insert(r.kernel);
  std::vector<std::string> models;  // first-seen order
  for (const auto& r : rows)
    if (std::find(models.begin(), models.end(), r.model) == models.end()) models.push_back(r.model);

  std::vector<Series> out;
  for (const auto& m : models) {
    Series pts{m, {}, {}, Series::Style::kPoints, {}};
    // (G, kernel) -> (p, row): the block-p sweep is the one ordered axis among the policies.
    std::map<std::pair<int64_t, std::string>, std::map<double, const GenBenchRow*>> sweeps;
    for (const auto& r : rows) {
      if (r.model != m || !r.kv_cache) continue;
      std::string label = policy_label(r.routing, r.top_p, r.block_min_experts);
      if (kernels.size() > 1) label += " (" + r.kernel + ")";
      pts.x.push_back(r.unique_experts_per_block);
      pts.y.push_back(r.moe_ms_per_forward);
      pts.labels.push_back(label);
      if (r.routing == "block") sweeps[{r.block_min_experts, r.kernel}][r.top_p] = &r;
    }
    if (pts.x.empty()) continue;
    out.push_back(pts);
    for (const auto& [key, by_p] : sweeps) {
      if (by_p.size() < 2) continue;
      Series line{m + ": block p sweep, G=" + std::to_string(key.first) +
                      (kernels.size() > 1 ? " (" + key.second + ")" : ""),
                  {}, {}, Series::Style::kLines, {}};
      for (const auto& [p, r] : by_p) {
        line.x.push_back(r->unique_experts_per_block);
        line.y.push_back(r->moe_ms_per_forward);
      }
      out.push_back(line);
    }
  }
  return out;
}

bool plot_generate(const std::vector<GenBenchRow>& rows, const std::string& png) {
  const auto parent = std::filesystem::path(png).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent);
  PlotSpec spec{"MoE time per forward vs unique experts per block (KV cache on; one point per routing policy)",
                "unique experts per block (log)", "MoE ms per forward (log)", true, "top left", true};
  return plot_lines(png, spec, plot_series(rows));
}

std::vector<GenBenchRow> rows_from_json(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object() || !j.contains("results") || !j["results"].is_array())
    fail(source, "results", "not a `bench generate --json` document (no \"results\" array)",
         "write it with `ecdlm bench generate --out-json FILE`");
  std::vector<GenBenchRow> rows;
  size_t i = 0;
  for (const auto& e : j["results"]) {
    const std::string where = "results[" + std::to_string(i++) + "]";
    auto get = [&](const char* key, auto& dst, bool required = true) {
      if (!e.contains(key)) {
        if (!required) return;
        fail(source, where + "." + key, "missing", "re-run `ecdlm bench generate --out-json`");
      }
      try {
        e.at(key).get_to(dst);
      } catch (const nlohmann::json::exception&) {
        fail(source, where + "." + key, "has the wrong type", "re-run `ecdlm bench generate --out-json`");
      }
    };
    GenBenchRow r;
    get("model", r.model);
    get("routing", r.routing);
    get("top_p", r.top_p);
    get("block_min_experts", r.block_min_experts);
    get("kv_cache", r.kv_cache);
    get("kernel", r.kernel);
    get("gen_length", r.gen_length);
    get("unique_experts_per_block", r.unique_experts_per_block);
    get("expert_bytes_per_forward", r.expert_bytes_per_forward);
    get("ms_per_forward", r.ms_per_forward);
    get("moe_ms_per_forward", r.moe_ms_per_forward);
    get("attention_ms_per_forward", r.attention_ms_per_forward);
    get("dense_ms_per_forward", r.dense_ms_per_forward);
    get("head_ms_per_forward", r.head_ms_per_forward);
    get("other_ms_per_forward", r.other_ms_per_forward);
    get("tokens_per_s", r.tokens_per_s);
    // Per-repetition detail is optional: a table transcribed from the markdown has none.
    get("tokens_per_s_reps", r.tokens_per_s_reps, false);
    get("tokens_per_forward", r.tokens_per_forward, false);
    get("forwards", r.forwards, false);
    rows.push_back(std::move(r));
  }
  return rows;
}

}  // namespace ecdlm::bench
