#include "ecdlm/moe/inference_routing.h"

#include "ecdlm/util/compat.h"
#include "ecdlm/util/error.h"

namespace ecdlm::moe {
namespace idx = torch::indexing;

RoutingPolicy parse_routing_policy(const std::string& name) {
  if (name == "token") return RoutingPolicy::kToken;
  if (name == "ec") return RoutingPolicy::kExpertChoice;
  if (name == "block") return RoutingPolicy::kBlock;
  if (name == "topk") return RoutingPolicy::kTopK;
  if (name == "des-s") return RoutingPolicy::kDesS;
  if (name == "des-v") return RoutingPolicy::kDesV;
  fail("", "--moe-routing", "unknown routing policy '" + name + "'", "use token, ec, block, topk, des-s or des-v");
}

std::string routing_policy_name(RoutingPolicy p) {
  switch (p) {
    case RoutingPolicy::kToken: return "token";
    case RoutingPolicy::kExpertChoice: return "ec";
    case RoutingPolicy::kBlock: return "block";
    case RoutingPolicy::kTopK: return "topk";
    case RoutingPolicy::kDesS: return "des-s";
    case RoutingPolicy::kDesV: return "des-v";
  }
  return "?";
}

void InferenceRouting::validate(const MoeConfig& c) const {
  if (policy == RoutingPolicy::kBlock) validate_block(c);
  if (policy == RoutingPolicy::kTopK && (topk_cap < 1 || topk_cap > c.num_experts_per_tok))
    fail("", "--moe-topk-cap", "must be in [1, " + std::to_string(c.num_experts_per_tok) + "] (the model's k)",
         "e.g. " + std::to_string(std::max<int64_t>(1, c.num_experts_per_tok / 2)));
  if (policy == RoutingPolicy::kDesS || policy == RoutingPolicy::kDesV) {
    if (policy == RoutingPolicy::kDesS && !(des_s_ratio > 0.0))
      fail("", "--moe-des-s-ratio", "must be > 0, got " + std::to_string(des_s_ratio),
           "e.g. 0.65 (1 = the chunk's token-routing pair budget)");
    if (policy == RoutingPolicy::kDesV && !(des_v_threshold >= 0.0 && des_v_threshold <= 1.0))
      fail("", "--moe-des-v-threshold", "must be in [0, 1], got " + std::to_string(des_v_threshold),
           "e.g. 0.07 (0 keeps every expert a token picked)");
    if (des_min_experts < 0 || des_min_experts > c.num_experts)
      fail("", "--moe-des-min-experts", std::to_string(des_min_experts) + " outside [0, " +
                                            std::to_string(c.num_experts) + "] (the model's experts)",
           "0 = the model's k");
    if (des_chunk < 1) fail("", "--moe-des-chunk", "must be >= 1", "32 (the decoding block)");
  }
  if (policy != RoutingPolicy::kToken && policy != RoutingPolicy::kExpertChoice &&
      c.router_type == RouterType::kExpertChoice)
    fail("", "--moe-routing", routing_policy_name(policy) + " routing needs a token-choice model; this one is expert choice",
         "use token (its own EC routing)");
}

void InferenceRouting::validate_block(const MoeConfig& c) const {
  if (!(block_top_p > 0.0 && block_top_p <= 1.0))
    fail("", "--block-top-p", "must be in (0, 1], got " + std::to_string(block_top_p), "e.g. 0.6");
  if (block_min_experts < 1 || block_min_experts > c.num_experts)
    fail("", "--block-min-experts", "G = " + std::to_string(block_min_experts) + " outside [1, " +
                                        std::to_string(c.num_experts) + "] (the model's experts)", "e.g. 16");
  if (block_chunk < 1) fail("", "--block-chunk", "must be >= 1", "dMoE uses 32");
}

torch::Tensor block_coreset(const torch::Tensor& biased_BLE, int64_t k, double top_p, int64_t min_experts,
                            int64_t chunk) {
  compat::AutocastOff fp32;
  const auto B = biased_BLE.size(0), L = biased_BLE.size(1), E = biased_BLE.size(2);
  const auto NC = (L + chunk - 1) / chunk;
  // Each token's plain top-k biased scores, zero elsewhere.
  auto r_BLE = biased_BLE.detach().to(torch::kFloat32);
  auto top_BLK = std::get<1>(r_BLE.topk(k, -1));
  auto vote_BLE = torch::zeros_like(r_BLE).scatter(2, top_BLK, r_BLE.gather(2, top_BLK));
  // Sum per chunk (a short last chunk is padded with zero votes).
  if (NC * chunk != L) vote_BLE = torch::cat({vote_BLE, torch::zeros({B, NC * chunk - L, E})}, 1);
  auto S_BCE = vote_BLE.view({B, NC, chunk, E}).sum(2);
  auto norm_BCE = S_BCE / (S_BCE.sum(-1, true) + 1e-20);
  // Descending, equal votes by lower expert id; keep j while the mass before it is <= p.
  auto sorted = torch::sort(norm_BCE, /*stable=*/true, /*dim=*/-1, /*descending=*/true);
  auto val_BCE = std::get<0>(sorted), order_BCE = std::get<1>(sorted);
  auto before_BCE = val_BCE.cumsum(-1) - val_BCE;
  auto keep_sorted = before_BCE <= top_p;
  keep_sorted.index_put_({idx::Ellipsis, 0}, true);
  // Minimum size G: the top-G of the sorted order.
  auto rank_E = torch::arange(E, torch::kInt64).view({1, 1, E});
  auto small_BC1 = keep_sorted.sum(-1, true) < min_experts;
  keep_sorted = torch::where(small_BC1, (rank_E < min_experts).expand_as(keep_sorted), keep_sorted);
  return torch::zeros({B, NC, E}, torch::kBool).scatter(2, order_BCE, keep_sorted);
}

torch::Tensor coreset_per_token(const torch::Tensor& coreset_BCE, int64_t L, int64_t chunk) {
  const auto B = coreset_BCE.size(0), E = coreset_BCE.size(2);
  auto chunk_L = torch::div(torch::arange(L, torch::kInt64), chunk, "floor");
  return coreset_BCE.index_select(1, chunk_L).reshape({B * L, E});
}

double unique_experts(const RoutingPlan& plan, int64_t B, int64_t L, int64_t row0, int64_t n) {
  if (B == 0 || n <= 0) return 0.0;
  return unique_experts_B(plan, B, L, row0, n).mean().item<double>();
}

torch::Tensor unique_experts_B(const RoutingPlan& plan, int64_t B, int64_t L, int64_t row0, int64_t n) {
  if (B == 0 || n <= 0) return torch::zeros({B}, torch::kFloat64);
  torch::Tensor used_BE;
  if (!plan.expert_major) {
    const auto K = plan.idx_TK.size(1);
    auto idx_BnK = plan.idx_TK.view({B, L, K}).narrow(1, row0, n).reshape({B, n * K});
    auto gate_BnK = plan.gate_TK.view({B, L, K}).narrow(1, row0, n).reshape({B, n * K});
    const auto E = std::max<int64_t>(1, plan.idx_TK.max().item<int64_t>() + 1);
    used_BE = torch::zeros({B, E}, torch::kInt64).scatter_add(1, idx_BnK, (gate_BnK != 0).to(torch::kInt64)) > 0;
  } else {
    // Slots hold flat token rows; a slot counts for the sequence and window its token falls in.
    const auto E = plan.token_EN.size(0);
    auto tok = plan.token_EN;
    auto in_window = (torch::remainder(tok, L) >= row0).logical_and(torch::remainder(tok, L) < row0 + n)
                         .logical_and(plan.gate_EN != 0);
    auto b_EN = torch::div(tok, L, "floor");
    used_BE = torch::zeros({B, E}, torch::kInt64)
                  .index_put_({b_EN.reshape({-1}), torch::arange(E, torch::kInt64).view({E, 1}).expand_as(tok).reshape({-1})},
                              in_window.reshape({-1}).to(torch::kInt64), /*accumulate=*/true) > 0;
  }
  return used_BE.sum(1).to(torch::kFloat64);
}

}  // namespace ecdlm::moe
