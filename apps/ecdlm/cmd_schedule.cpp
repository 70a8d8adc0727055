// ecdlm schedule: k(r) and capacity C(r) of an expert-choice capacity schedule, its expected k over
// the realized mask-ratio distribution of training, and the FLOP-matched static k.
#include <cmath>
#include <iomanip>
#include <iostream>

#include "commands.h"
#include "ecdlm/moe/capacity.h"
#include "ecdlm/util/error.h"

namespace ecdlm::cli {
namespace {

struct ScheduleArgs {
  std::string schedule = "linear-reverse";
  double k_min = 8, k_max = 32, sigma = 0.22;
  int64_t seq_len = 512, experts = 512, points = 9;
  bool json = false;
};

int run(const ScheduleArgs& a) {
  if (a.k_min < 0 || a.k_max < a.k_min) fail("", "--moe-capacity-k-min", "need 0 <= k_min <= k_max", "");
  auto s = moe::parse_schedule(a.schedule);
  moe::CapacitySchedule sched(s, a.k_max, a.k_min, a.k_max, a.sigma);
  // Rounded so that e.g. 19.9999999 (float sums) gives the capacity of 20.
  const double ek = std::round(sched.expected_k(a.seq_len) * 1e6) / 1e6;
  nlohmann::json rows = nlohmann::json::array();
  for (int64_t i = 0; i < a.points; ++i) {
    // r = 1/L stands for 0+ (at least one token is always masked).
    float r = i == 0 ? 1.0f / static_cast<float>(a.seq_len)
                     : static_cast<float>(i) / static_cast<float>(a.points - 1);
    auto c = sched.capacity(torch::tensor({r}), a.seq_len, a.experts)[0].item<int64_t>();
    rows.push_back({{"r", r}, {"k", sched.k_for(r)}, {"capacity", c}});
  }
  if (a.json) {
    std::cout << nlohmann::json({{"schedule", moe::schedule_name(s)}, {"k_min", a.k_min}, {"k_max", a.k_max},
                                 {"seq_len", a.seq_len}, {"experts", a.experts}, {"expected_k", ek},
                                 {"matched_static_k", ek}, {"points", rows}})
                     .dump(2)
              << std::endl;
    return 0;
  }
  std::cout << "schedule " << moe::schedule_name(s) << ", k in [" << a.k_min << ", " << a.k_max
            << "], L = " << a.seq_len << ", E = " << a.experts << "\n\n| r | k(r) | C = max(floor(L k / E), 1) |\n|---|---|---|\n";
  for (const auto& row : rows)
    std::cout << "| " << std::setprecision(4) << row["r"].get<double>() << " | " << row["k"].get<double>()
              << " | " << row["capacity"].get<int64_t>() << " |\n";
  std::cout << "\nE[k] over the realized r of training (r = m/L, m uniform on 0..L, at least 1): "
            << std::fixed << std::setprecision(3) << ek << "\nFLOP-matched static schedule: k = " << ek
            << " (C = " << moe::CapacitySchedule::make_static(ek).static_capacity(a.seq_len, a.experts)
            << ")\n";
  return 0;
}

}  // namespace

void register_schedule(CLI::App& app) {
  auto a = std::make_shared<ScheduleArgs>();
  auto* sub = app.add_subcommand("schedule", "Show an EC capacity schedule k(r), its E[k] and the FLOP-matched static k");
  sub->add_option("--moe-capacity-schedule", a->schedule,
                  "static, linear, linear-reverse, cosine, cosine-reverse, gaussian, gaussian-reverse")->capture_default_str();
  sub->add_option("--moe-capacity-k-min", a->k_min, "k at the low end of the schedule")->capture_default_str();
  sub->add_option("--moe-capacity-k-max", a->k_max, "k at the high end (static: k)")->capture_default_str();
  sub->add_option("--moe-capacity-gaussian-sigma", a->sigma, "Gaussian width")
      ->capture_default_str()->check(Finite)->check(CLI::PositiveNumber);
  sub->add_option("--seq-len", a->seq_len, "Sequence length L")->capture_default_str()->check(CLI::PositiveNumber);
  sub->add_option("--moe-experts", a->experts, "Routed experts E")->capture_default_str()->check(CLI::PositiveNumber);
  sub->add_option("--points", a->points, "Rows of the k(r) table")->capture_default_str()->check(CLI::Range(2, 1000));
  sub->add_flag("--json", a->json, "Print JSON");
  set_runner(sub, [a] { return run(*a); });
}

}  // namespace ecdlm::cli
