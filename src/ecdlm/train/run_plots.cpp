#include "ecdlm/train/run_plots.h"

#include <filesystem>
#include <map>

#include "ecdlm/train/metrics.h"
#include "ecdlm/util/plot.h"

namespace ecdlm {
namespace fs = std::filesystem;

std::vector<std::string> plot_run(const std::string& run_dir) {
  std::vector<std::string> out;
  auto metrics_path = (fs::path(run_dir) / "metrics.jsonl").string();
  if (!fs::exists(metrics_path)) return out;
  auto lines = read_metrics(metrics_path);
  Series train{"train loss", {}, {}}, val{"val loss (ELBO)", {}, {}};
  std::map<std::string, Series> bins;
  for (const auto& j : lines) {
    if (!j.contains("step")) continue;
    double step = j["step"].get<double>();
    if (j.contains("loss") && !j.contains("event")) {
      train.x.push_back(step);
      train.y.push_back(j["loss"].get<double>());
    }
    if (j.contains("val_loss")) {
      val.x.push_back(step);
      val.y.push_back(j["val_loss"].get<double>());
      if (j.contains("val_per_bin") && j["val_per_bin"].contains("4")) {
        for (const auto& b : j["val_per_bin"]["4"]) {
          char name[64];
          std::snprintf(name, sizeof(name), "r in [%.2f, %.2f)", b["lo"].get<double>(), b["hi"].get<double>());
          auto& s = bins[name];
          s.name = name;
          s.x.push_back(step);
          s.y.push_back(b["loss"].get<double>());
        }
      }
    }
  }
  fs::create_directories(fs::path(run_dir) / "plots");
  auto loss_png = (fs::path(run_dir) / "plots" / "loss.png").string();
  if (plot_lines(loss_png, {"Training and validation loss", "step", "loss (nats/token)", false},
                 {train, val}))
    out.push_back(loss_png);
  if (!bins.empty()) {
    std::vector<Series> s;
    for (auto& kv : bins) s.push_back(kv.second);
    auto bins_png = (fs::path(run_dir) / "plots" / "val_loss_per_bin.png").string();
    if (plot_lines(bins_png, {"Validation loss per mask-ratio bin", "step", "loss (nats/token)", false}, s))
      out.push_back(bins_png);
  }
  return out;
}

}  // namespace ecdlm
