// Small helpers shared by the subcommands.
#pragma once
#include <cstdint>
#include <string>

#include "ecdlm/model/config.h"

namespace ecdlm::cli {

// "90", "90s", "20m", "1.5h" -> seconds; UserError naming `flag` otherwise.
double parse_duration(const std::string& s, const std::string& flag);

// "5GB", "500MB", "2GiB", "1048576" -> bytes; UserError naming `flag` otherwise.
uint64_t parse_size(const std::string& s, const std::string& flag);

// Reads {"model": {...}, "train": {...}} (either part optional) from a JSON file.
struct RunConfig {
  ModelConfig model;
  nlohmann::json train = nlohmann::json::object();
  std::string source;
};
RunConfig load_run_config(const std::string& path);

}  // namespace ecdlm::cli
