#include "cli_util.h"

#include <cstdlib>

#include "ecdlm/util/error.h"
#include "ecdlm/util/fs.h"

namespace ecdlm::cli {

double parse_duration(const std::string& s, const std::string& flag) {
  if (s.empty()) fail("", flag, "empty duration", "use e.g. 90, 90s, 20m or 1.5h");
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  std::string unit(end);
  double mult = unit.empty() || unit == "s" ? 1.0 : unit == "m" ? 60.0 : unit == "h" ? 3600.0 : -1.0;
  if (end == s.c_str() || mult < 0 || v < 0)
    fail("", flag, "cannot parse duration '" + s + "'", "use e.g. 90, 90s, 20m or 1.5h");
  return v * mult;
}

uint64_t parse_size(const std::string& s, const std::string& flag) {
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  const std::string unit(end);
  const std::pair<const char*, double> units[] = {{"", 1.0},       {"B", 1.0},        {"KB", 1e3},
                                                  {"MB", 1e6},     {"GB", 1e9},       {"KiB", 1024.0},
                                                  {"MiB", 1048576.0}, {"GiB", 1073741824.0}};
  for (const auto& [u, mult] : units)
    if (unit == u && end != s.c_str() && v > 0) return static_cast<uint64_t>(v * mult);
  fail("", flag, "cannot parse size '" + s + "'", "use e.g. 5GB, 500MB or 2GiB");
}

RunConfig load_run_config(const std::string& path) {
  RunConfig rc;
  rc.source = path;
  auto j = read_json_file(path);
  if (!j.is_object()) fail(path, "", "must be a JSON object with \"model\" and/or \"train\"", "");
  for (auto it = j.begin(); it != j.end(); ++it)
    if (it.key() != "model" && it.key() != "train" && it.key() != "description")
      fail(path, it.key(), "unknown section", "use \"model\", \"train\" and \"description\"");
  if (j.contains("model")) {
    std::vector<std::string> unknown;
    rc.model = ModelConfig::from_json(j["model"], path + ": model", &unknown);
    if (!unknown.empty()) fail(path, "model." + unknown.front(), "unknown key", "check the spelling");
  }
  if (j.contains("train")) rc.train = j["train"];
  return rc;
}

}  // namespace ecdlm::cli
