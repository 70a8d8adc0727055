// Aggregates per-layer RoutingStats into the numbers we log (host-side, once per log step).
#pragma once
#include <nlohmann/json.hpp>

#include <vector>

#include "ecdlm/moe/moe.h"

namespace ecdlm::moe {

struct RoutingSummary {
  double load_cv = 0.0;            // coefficient of variation of tokens per expert, mean over layers
  double drop_rate = 0.0;          // dropped (token, expert) pairs / all pairs chosen (TC capacity)
  double zero_expert_rate = 0.0;   // tokens reaching no routed expert / tokens
  double mean_capacity = 0.0;      // EC: mean C per sequence (0 for TC)
  int64_t forwards = 0;

  void add(const std::vector<RoutingStats>& layers);  // one forward's layers
  RoutingSummary averaged() const;                    // means over the added forwards
  nlohmann::json to_json() const;
};

}  // namespace ecdlm::moe
