#include "ecdlm/moe/capacity.h"

#include <algorithm>
#include <cmath>

#include "ecdlm/util/error.h"

namespace ecdlm::moe {
namespace {
struct NamedSchedule {
  const char* name;
  Schedule s;
};
constexpr NamedSchedule kNames[] = {
    {"static", Schedule::kStatic},
    {"linear", Schedule::kLinear},
    {"linear-reverse", Schedule::kLinearReverse},
    {"cosine", Schedule::kCosine},
    {"cosine-reverse", Schedule::kCosineReverse},
    {"gaussian", Schedule::kGaussian},
    {"gaussian-reverse", Schedule::kGaussianReverse},
};
}  // namespace

Schedule parse_schedule(const std::string& name) {
  std::string n = name;
  std::replace(n.begin(), n.end(), '_', '-');
  for (const auto& e : kNames)
    if (n == e.name) return e.s;
  fail("", "moe_capacity_schedule", "unknown schedule '" + name + "'",
       "use static, linear, linear-reverse, cosine, cosine-reverse, gaussian or gaussian-reverse");
}

std::string schedule_name(Schedule s) {
  for (const auto& e : kNames)
    if (e.s == s) return e.name;
  return "?";
}

CapacitySchedule::CapacitySchedule(Schedule s, double k_static, double k_min, double k_max,
                                   double sigma)
    : s_(s), k_static_(k_static), k_min_(k_min), k_max_(k_max), sigma_(sigma) {
  if (s_ == Schedule::kStatic) k_min_ = k_max_ = k_static_;
}

float CapacitySchedule::shape(float r) const {
  const float pi = 3.14159265358979323846f;
  switch (s_) {
    case Schedule::kStatic: return 0.0f;
    case Schedule::kLinear: return r;
    case Schedule::kLinearReverse: return 1.0f - r;
    // Written as the reference code does: cos(pi * (1 - ratio)).
    case Schedule::kCosine: return 0.5f * (1.0f + std::cos(pi * (1.0f - r)));
    case Schedule::kCosineReverse: return 0.5f * (1.0f + std::cos(pi * (1.0f - (1.0f - r))));
    case Schedule::kGaussian:
    case Schedule::kGaussianReverse: {
      // G0 in double, the rest in float32, as in the reference.
      double g0 = std::exp(-0.25 / (2.0 * sigma_ * sigma_));
      float sig = static_cast<float>(sigma_);
      float g = std::exp(-(r - 0.5f) * (r - 0.5f) / (2.0f * sig * sig));
      float v = (g - static_cast<float>(g0)) / (1.0f - static_cast<float>(g0));
      v = std::min(1.0f, std::max(0.0f, v));
      return s_ == Schedule::kGaussian ? v : 1.0f - v;
    }
  }
  return 0.0f;
}

double CapacitySchedule::k_for(float r) const {
  if (s_ == Schedule::kStatic) return k_static_;
  float kmin = static_cast<float>(k_min_), kmax = static_cast<float>(k_max_);
  float k = std::nearbyint(kmin + (kmax - kmin) * shape(r));  // round-half-even
  return std::min(kmax, std::max(kmin, k));
}

int64_t CapacitySchedule::static_capacity(int64_t seq_len, int64_t num_experts) const {
  auto c = static_cast<int64_t>(std::floor(static_cast<double>(seq_len) * k_static_ /
                                           static_cast<double>(num_experts)));
  return std::min(seq_len, std::max<int64_t>(1, c));
}

torch::Tensor CapacitySchedule::capacity(const torch::Tensor& r_B, int64_t seq_len,
                                         int64_t num_experts) const {
  auto r = r_B.to(torch::kFloat32).contiguous();
  const int64_t B = r.size(0);
  auto out = torch::empty({B}, torch::kInt64);
  auto* rp = r.data_ptr<float>();
  auto* op = out.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    double k = k_for(rp[b]);
    auto c = static_cast<int64_t>(
        std::floor(static_cast<double>(seq_len) * k / static_cast<double>(num_experts)));
    op[b] = std::min(seq_len, std::max<int64_t>(1, c));
  }
  return out;
}

double CapacitySchedule::expected_k(int64_t L) const {
  double acc = 0.0;
  for (int64_t m = 1; m <= L; ++m) {
    double p = (m == 1 ? 2.0 : 1.0) / static_cast<double>(L + 1);
    acc += p * k_for(static_cast<float>(m) / static_cast<float>(L));
  }
  return acc;
}

CapacitySchedule make_schedule(const MoeConfig& c) {
  auto s = parse_schedule(c.capacity_schedule);
  double k = static_cast<double>(c.num_experts_per_tok);
  double kmin = c.capacity_k_min > 0 ? c.capacity_k_min : k;
  double kmax = c.capacity_k_max > 0 ? c.capacity_k_max : k;
  return CapacitySchedule(s, k, kmin, kmax, c.capacity_gaussian_sigma);
}

}  // namespace ecdlm::moe
