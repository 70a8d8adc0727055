// Append-only JSONL metrics. On resume, lines from steps after the checkpoint are dropped so
// the log matches an uninterrupted run.
#pragma once
#include <nlohmann/json.hpp>

#include <fstream>
#include <string>

namespace ecdlm {

class MetricsLog {
 public:
  // An empty path: a log that writes nothing (the ranks other than 0 of a distributed run).
  MetricsLog(const std::string& path, int64_t resume_step);
  void write(const nlohmann::json& line);

 private:
  std::string path_;
  std::ofstream out_;
};

// Reads every line of a metrics.jsonl (bad lines -> UserError with the line number).
std::vector<nlohmann::json> read_metrics(const std::string& path);

}  // namespace ecdlm
