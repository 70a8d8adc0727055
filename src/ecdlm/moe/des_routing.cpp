#include "ecdlm/moe/des_routing.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ecdlm/util/compat.h"

namespace ecdlm::moe {
namespace {

// Pads [B, L, E] to whole chunks with `fill` and views it as [B, NC, chunk, E].
torch::Tensor chunked(const torch::Tensor& x_BLE, int64_t chunk, double fill) {
  const auto B = x_BLE.size(0), L = x_BLE.size(1), E = x_BLE.size(2);
  const auto NC = (L + chunk - 1) / chunk;
  auto x = x_BLE.detach().to(torch::kFloat32);
  if (NC * chunk != L) x = torch::cat({x, torch::full({B, NC * chunk - L, E}, fill, torch::kFloat32)}, 1);
  return x.view({B, NC, chunk, E});
}

// Keeps, per (sequence, chunk), the experts ranked before max(count, min_experts) in the
// descending order of rank_BCE (stable: equal values by lower expert id).
torch::Tensor keep_prefix(const torch::Tensor& rank_BCE, const torch::Tensor& count_BC, int64_t min_experts) {
  const auto E = rank_BCE.size(2);
  auto order_BCE = std::get<1>(torch::sort(rank_BCE, /*stable=*/true, /*dim=*/-1, /*descending=*/true));
  auto n_BC1 = count_BC.clamp_min(min_experts).unsqueeze(-1);
  auto keep_sorted = torch::arange(E, torch::kInt64).view({1, 1, E}) < n_BC1;
  return torch::zeros(rank_BCE.sizes(), torch::kBool).scatter(2, order_BCE, keep_sorted);
}

}  // namespace

torch::Tensor des_seq_coreset(const torch::Tensor& biased_BLE, int64_t k, double ratio, int64_t min_experts,
                              int64_t chunk) {
  compat::AutocastOff fp32;
  const auto B = biased_BLE.size(0), L = biased_BLE.size(1), E = biased_BLE.size(2);
  const auto NC = (L + chunk - 1) / chunk;
  auto r_BCnE = chunked(biased_BLE, chunk, -std::numeric_limits<double>::infinity());
  // Pair budget per chunk, from the tokens it really has (a short last chunk has fewer).
  std::vector<int64_t> m(static_cast<size_t>(NC));
  for (int64_t c = 0; c < NC; ++c) {
    const int64_t n = std::min(chunk, L - c * chunk);
    const auto want = static_cast<int64_t>(std::ceil(ratio * static_cast<double>(n * k) - 1e-9));
    m[static_cast<size_t>(c)] = std::clamp<int64_t>(want, 1, n * E);
  }
  // The m-th best pair score of the chunk; an expert owns a kept pair iff its best score reaches it.
  auto sorted_BCX = std::get<0>(r_BCnE.reshape({B, NC, chunk * E}).sort(-1, /*descending=*/true));
  auto pos_BC1 = (torch::tensor(m, torch::kInt64) - 1).view({1, NC, 1}).expand({B, NC, 1});
  auto tau_BC1 = sorted_BCX.gather(2, pos_BC1);
  auto best_BCE = std::get<0>(r_BCnE.max(2));
  auto count_BC = (best_BCE >= tau_BC1).sum(-1);
  return keep_prefix(best_BCE, count_BC, min_experts);
}

torch::Tensor des_vote_coreset(const torch::Tensor& vote_BLE, double threshold, int64_t min_experts, int64_t chunk) {
  compat::AutocastOff fp32;
  auto S_BCE = chunked(vote_BLE, chunk, 0.0).sum(2);
  auto top_BC1 = std::get<0>(S_BCE.max(-1, /*keepdim=*/true));
  // Experts nobody voted for never pass, even at threshold 0.
  auto pass_BCE = (S_BCE > 0).logical_and(S_BCE >= threshold * top_BC1);
  return keep_prefix(S_BCE, pass_BCE.sum(-1), min_experts);
}

}  // namespace ecdlm::moe
