#include "ecdlm/train/metrics.h"

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "ecdlm/util/error.h"
#include "ecdlm/util/fs.h"

namespace ecdlm {

std::vector<nlohmann::json> read_metrics(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail(path, "", "cannot open metrics file", "check the run directory");
  std::vector<nlohmann::json> out;
  std::string line;
  int64_t n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.empty()) continue;
    try {
      out.push_back(nlohmann::json::parse(line));
    } catch (const nlohmann::json::parse_error& e) {
      fail(path, "line " + std::to_string(n), std::string("invalid JSON: ") + e.what(), "");
    }
  }
  return out;
}

MetricsLog::MetricsLog(const std::string& path, int64_t resume_step) : path_(path) {
  if (path.empty()) return;
  if (resume_step > 0 && std::filesystem::exists(path)) {
    std::string kept;
    for (const auto& j : read_metrics(path))
      if (j.value("step", int64_t{0}) <= resume_step) kept += j.dump() + "\n";
    write_file_atomic(path, kept);
  } else if (resume_step == 0) {
    write_file_atomic(path, "");
  }
  out_.open(path, std::ios::app);
  if (!out_) fail(path, "", "cannot open metrics file for writing", "check the output directory");
}

void MetricsLog::write(const nlohmann::json& line) {
  if (path_.empty()) return;
  out_ << line.dump() << "\n";
  out_.flush();
  if (!out_) fail(path_, "", std::string("write failed: ") + std::strerror(errno), "free disk space");
}

}  // namespace ecdlm
