#include "ecdlm/moe/routing_stats.h"

#include <cmath>

namespace ecdlm::moe {

void RoutingSummary::add(const std::vector<RoutingStats>& layers) {
  if (layers.empty()) return;
  double cv = 0, drop = 0, zero = 0, cap = 0;
  for (const auto& s : layers) {
    auto load = s.tokens_per_expert_E.to(torch::kFloat64);
    double mean = load.mean().item<double>();
    cv += mean > 0 ? load.std(/*unbiased=*/false).item<double>() / mean : 0.0;
    double chosen = load.sum().item<double>() + s.dropped_pairs.item<double>();
    drop += chosen > 0 ? s.dropped_pairs.item<double>() / chosen : 0.0;
    zero += s.num_tokens > 0 ? s.zero_expert_tokens.item<double>() / s.num_tokens : 0.0;
    if (s.capacity_B.defined()) cap += s.capacity_B.to(torch::kFloat64).mean().item<double>();
  }
  const double n = static_cast<double>(layers.size());
  load_cv += cv / n;
  drop_rate += drop / n;
  zero_expert_rate += zero / n;
  mean_capacity += cap / n;
  forwards += 1;
}

RoutingSummary RoutingSummary::averaged() const {
  RoutingSummary r = *this;
  if (forwards > 0) {
    const double n = static_cast<double>(forwards);
    r.load_cv /= n;
    r.drop_rate /= n;
    r.zero_expert_rate /= n;
    r.mean_capacity /= n;
  }
  return r;
}

nlohmann::json RoutingSummary::to_json() const {
  return {{"load_cv", load_cv},
          {"drop_rate", drop_rate},
          {"zero_expert_rate", zero_expert_rate},
          {"mean_capacity", mean_capacity}};
}

}  // namespace ecdlm::moe
