// Work units of a parallel region split between its threads by cost, not count: the experts of a
// decoding step differ ~50x in token rows, and `omp for`'s equal counts left one thread up to
// 1.47x the mean. Shared by the grouped bf16 MoE (small_m.cpp) and the quantized one (quant_moe.cpp).
#pragma once
#include <omp.h>

#include <cstdint>
#include <utility>
#include <vector>

namespace ecdlm::kernels::detail {

// Prefix sums (groups * units_per_group + 1 entries) of the costs of units grouped by expert:
// unit u costs group_cost(u / units_per_group).
template <class Cost>
std::vector<double> unit_cost_prefix(int64_t groups, int64_t units_per_group, Cost group_cost) {
  std::vector<double> prefix{0.0};
  prefix.reserve(static_cast<size_t>(groups * units_per_group) + 1);
  for (int64_t g = 0; g < groups; ++g) {
    const double c = group_cost(g);
    for (int64_t u = 0; u < units_per_group; ++u) prefix.push_back(prefix.back() + c);
  }
  return prefix;
}

// The calling OpenMP thread's contiguous share [u0, u1) of the units: unit u goes to the thread in
// whose 1/T of the total cost its midpoint lies. Contiguous, so a thread streams one slice of the
// weights.
inline std::pair<int64_t, int64_t> thread_share(const std::vector<double>& cost_prefix) {
  const int t = omp_get_thread_num(), T = omp_get_num_threads();
  const auto U = static_cast<int64_t>(cost_prefix.size()) - 1;
  const auto at = [&](int i) {
    if (i == 0) return int64_t{0};
    if (i == T) return U;
    const double target = cost_prefix.back() * i / T;
    int64_t lo = 0, hi = U;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if ((cost_prefix[size_t(mid)] + cost_prefix[size_t(mid) + 1]) / 2 >= target) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  };
  return {at(t), at(t + 1)};
}

}  // namespace ecdlm::kernels::detail
