#include "ecdlm/moe/scaling.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <random>

namespace ecdlm::moe {
namespace {
constexpr int kSamples = 10000;
}

const std::vector<float>& ec_scaling_table(int64_t max_n, double s_sh) {
  static std::mutex mu;
  static std::map<std::pair<int64_t, double>, std::vector<float>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto key = std::make_pair(max_n, s_sh);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  std::vector<float> table(static_cast<size_t>(max_n + 1), 1.0f);
  std::mt19937_64 rng(42);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> z;
  for (int64_t n = 1; n <= max_n; ++n) {
    z.resize(static_cast<size_t>(n));
    double acc = 0.0;
    for (int s = 0; s < kSamples; ++s) {
      double mx = -1e300;
      for (auto& v : z) {
        v = normal(rng);
        mx = std::max(mx, v);
      }
      double sum = 0.0, sq = 0.0;
      for (auto& v : z) {
        v = std::exp(v - mx);
        sum += v;
      }
      for (double v : z) sq += (v / sum) * (v / sum);
      acc += std::sqrt(s_sh) / std::sqrt(sq);
    }
    table[static_cast<size_t>(n)] = static_cast<float>(acc / kSamples);
  }
  return cache.emplace(key, std::move(table)).first->second;
}

double tc_scaling_factor(int64_t num_experts, int64_t k, double s_sh) {
  std::mt19937_64 rng(42);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> z(static_cast<size_t>(num_experts));
  double acc = 0.0;
  for (int s = 0; s < kSamples; ++s) {
    for (auto& v : z) v = normal(rng);
    std::partial_sort(z.begin(), z.begin() + k, z.end(), std::greater<double>());
    // Renormalized top-k softmax probabilities = softmax over the top-k logits.
    double sum = 0.0, sq = 0.0;
    for (int64_t i = 0; i < k; ++i) sum += std::exp(z[i] - z[0]);
    for (int64_t i = 0; i < k; ++i) {
      double p = std::exp(z[i] - z[0]) / sum;
      sq += p * p;
    }
    acc += std::sqrt(s_sh) / std::sqrt(sq);
  }
  return acc / kSamples;
}

}  // namespace ecdlm::moe
