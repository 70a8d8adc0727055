#include "ecdlm/moe/router.h"

#include <cmath>
#include <limits>

#include "ecdlm/kernels/row_exact.h"
#include "ecdlm/kernels/small_m.h"
#include "ecdlm/nn/dtype.h"
#include "ecdlm/util/compat.h"

namespace ecdlm::moe {
namespace idx = torch::indexing;

torch::Tensor router_logits(const torch::Tensor& x_TD, const torch::Tensor& w_ED) {
  compat::AutocastOff fp32;
  const auto x = to_f32_or_wider(x_TD);
  const auto w = w_ED.to(x.scalar_type());
  // A decoding step's few rows: torch's sgemm took 0.54 ms per LLaDA2 layer (32 x 2048 x 256).
  if (kernels::small_m_f32_applies(x, w)) return kernels::small_m_linear_f32(x, w);
  // Inside the decoders the same tiles at any row count: BLAS rounds a token's logits differently
  // with M, which could flip a near tie between experts when a served row shares a batch.
  if (const auto xc = x.contiguous(); kernels::f32_rows_applies(xc, w)) return kernels::f32_rows(xc, w);
  return torch::nn::functional::linear(x, w);
}

torch::Tensor z_loss(const torch::Tensor& logits_TE, double coeff) {
  auto lse_T = torch::logsumexp(logits_TE, -1);
  return coeff * lse_T.pow(2).mean();
}

torch::Tensor switch_aux_loss(const torch::Tensor& logits_TE, const torch::Tensor& load_E,
                              int64_t k, double coeff) {
  const auto T = logits_TE.size(0), E = logits_TE.size(1);
  auto P_E = torch::softmax(logits_TE, -1).sum(0);
  auto f_E = load_E.to(torch::kFloat32);
  double scale = coeff * static_cast<double>(E) / (static_cast<double>(T) * T * k);
  return scale * (P_E * f_E).sum();
}

namespace {
// Indices of the k largest entries per row. Stable when asked: equal values (-inf included) go to
// the lower index, so restricted routing is deterministic where torch.topk's order is not defined.
torch::Tensor topk_indices(const torch::Tensor& s_TX, int64_t k, bool stable) {
  if (!stable) return std::get<1>(s_TX.topk(k, -1));
  auto order = std::get<1>(torch::sort(s_TX, /*stable=*/true, /*dim=*/-1, /*descending=*/true));
  return order.index({idx::Slice(), idx::Slice(0, k)});
}
}  // namespace

torch::Tensor select_topk_grouped(const torch::Tensor& biased_TE, int64_t k, int64_t n_group,
                                  int64_t topk_group, const torch::Tensor& allowed_TE) {
  const double neg_inf = -std::numeric_limits<double>::infinity();
  const bool restricted = allowed_TE.defined();
  auto s_TE = biased_TE.detach();
  if (restricted) s_TE = s_TE.masked_fill(allowed_TE.logical_not(), neg_inf);
  const auto T = s_TE.size(0), E = s_TE.size(1);
  if (n_group > 1 && topk_group < n_group) {
    const auto gsz = E / n_group;
    auto g_TGS = s_TE.view({T, n_group, gsz});
    // A group with fewer than two allowed experts scores -inf, as in the reference gate.
    auto group_score_TG = std::get<0>(g_TGS.topk(std::min<int64_t>(2, gsz), -1)).sum(-1);
    auto keep_TG = torch::zeros({T, n_group}, torch::kBool)
                       .scatter_(1, topk_indices(group_score_TG, topk_group, restricted), true);
    auto keep_TE = keep_TG.unsqueeze(-1).expand({T, n_group, gsz}).reshape({T, E});
    s_TE = s_TE.masked_fill(keep_TE.logical_not(), neg_inf);
  }
  return topk_indices(s_TE, k, restricted);
}

torch::Tensor biased_scores(const torch::Tensor& logits_TE, const torch::Tensor& bias_E, ScoreFn score) {
  compat::AutocastOff fp32;
  auto scores_TE = score == ScoreFn::kSigmoid ? torch::sigmoid(logits_TE) : torch::softmax(logits_TE, -1);
  return bias_E.defined() ? scores_TE + bias_E.to(scores_TE.scalar_type()) : scores_TE;
}

RoutingPlan route_token_choice(const torch::Tensor& logits_TE, const torch::Tensor& bias_E,
                               const TokenChoiceParams& p, const torch::Tensor& allowed_TE) {
  compat::AutocastOff fp32;
  const auto T = logits_TE.size(0), E = logits_TE.size(1);
  auto scores_TE = p.score == ScoreFn::kSigmoid ? torch::sigmoid(logits_TE)
                                                : torch::softmax(logits_TE, -1);
  auto biased_TE = bias_E.defined() ? scores_TE + bias_E.to(scores_TE.scalar_type()) : scores_TE;
  auto idx_TK = select_topk_grouped(biased_TE, p.k, p.n_group, p.topk_group, allowed_TE);
  auto gate_TK = (p.bias_in_gate ? biased_TE : scores_TE).gather(1, idx_TK);
  if (p.norm_topk_prob) gate_TK = gate_TK / (gate_TK.sum(-1, true) + 1e-20);
  if (p.scaling != 1.0) gate_TK = gate_TK * p.scaling;

  RoutingPlan plan;
  plan.load_E = torch::bincount(idx_TK.reshape({-1}), {}, E);
  if (p.compute_losses) {
    auto aux = torch::zeros({}, torch::kFloat32);
    if (p.z_loss_coeff > 0) aux = aux + z_loss(logits_TE, p.z_loss_coeff);
    if (p.aux_loss_coeff > 0) aux = aux + switch_aux_loss(logits_TE, plan.load_E, p.k, p.aux_loss_coeff);
    plan.aux_loss = aux;
  }
  plan.stats.num_tokens = T;
  if (p.capacity_factor <= 0) {
    plan.expert_major = false;
    plan.idx_TK = idx_TK;
    plan.gate_TK = gate_TK;
    plan.stats.tokens_per_expert_E = plan.load_E;
    plan.stats.dropped_pairs = torch::zeros({}, torch::kInt64);
    plan.stats.zero_expert_tokens = torch::zeros({}, torch::kInt64);
    return plan;
  }
  // Capacity: per expert keep the C pairs with the largest gate (drop policy "probs").
  // Done as an expert-major top-C over an [E, T] gate matrix, so the result has fixed shape.
  const auto C = std::min<int64_t>(
      T, static_cast<int64_t>(std::ceil(static_cast<double>(T) * p.k / E * p.capacity_factor)));
  auto gate_dense_TE = torch::zeros({T, E}, gate_TK.options()).scatter(1, idx_TK, gate_TK);
  auto chosen_TE = torch::zeros({T, E}, torch::kBool).scatter_(1, idx_TK, true);
  // Not-chosen pairs sort last; gates can be negative (biased weights), so use -inf, not -1.
  auto key_ET = gate_dense_TE.detach().masked_fill(chosen_TE.logical_not(), -std::numeric_limits<float>::infinity()).t();
  auto sorted = torch::sort(key_ET, /*stable=*/true, /*dim=*/1, /*descending=*/true);
  auto tok_EC = std::get<1>(sorted).index({idx::Slice(), idx::Slice(0, C)}).contiguous();
  auto valid_EC = std::get<0>(sorted).index({idx::Slice(), idx::Slice(0, C)}) > -std::numeric_limits<float>::infinity();
  plan.expert_major = true;
  plan.token_EN = tok_EC;
  plan.gate_EN = gate_dense_TE.t().gather(1, tok_EC) * valid_EC;
  plan.stats.tokens_per_expert_E = valid_EC.sum(1);
  plan.stats.dropped_pairs = T * p.k - valid_EC.sum();
  auto kept_T = torch::zeros({T}, torch::kInt64)
                    .index_add_(0, tok_EC.reshape({-1}), valid_EC.reshape({-1}).to(torch::kInt64));
  plan.stats.zero_expert_tokens = (kept_T == 0).sum();
  return plan;
}

RoutingPlan route_expert_choice(const torch::Tensor& logits_BLE, const torch::Tensor& capacity_B,
                                const ExpertChoiceParams& p) {
  compat::AutocastOff fp32;
  const auto B = logits_BLE.size(0), L = logits_BLE.size(1), E = logits_BLE.size(2);
  const auto C = capacity_B.max().item<int64_t>();
  auto logits_BEL = logits_BLE.transpose(1, 2);
  // Stable descending sort: among equal logits the lower position wins.
  auto order_BEL = std::get<1>(torch::sort(logits_BEL.detach(), /*stable=*/true, 2, true));
  auto pos_BEC = order_BEL.index({idx::Slice(), idx::Slice(), idx::Slice(0, C)}).contiguous();
  auto valid_BEC = (torch::arange(C, torch::kInt64).view({1, 1, C}) < capacity_B.view({B, 1, 1}))
                       .expand({B, E, C});
  auto sel_BEL = torch::zeros({B, E, L}, torch::kBool).scatter(2, pos_BEC, valid_BEC);
  auto sel_BLE = sel_BEL.transpose(1, 2);
  // Softmax over the selecting experts only; tokens nobody chose get all-zero gates.
  auto probs_BLE = torch::softmax(logits_BLE.masked_fill(sel_BLE.logical_not(), -1e30), -1) *
                   sel_BLE.to(logits_BLE.scalar_type());
  auto gate_BEC = probs_BLE.transpose(1, 2).gather(2, pos_BEC);
  auto n_BL = sel_BLE.sum(-1);
  if (p.phi) {
    auto phi = torch::from_blob(const_cast<float*>(p.phi->data()),
                                {static_cast<int64_t>(p.phi->size())}, torch::kFloat32);
    auto phi_BL = phi.index_select(0, n_BL.reshape({-1})).view({B, L});
    gate_BEC = gate_BEC * phi_BL.unsqueeze(1).expand({B, E, L}).gather(2, pos_BEC);
  }
  gate_BEC = gate_BEC * valid_BEC;
  auto flat_BEC = pos_BEC + (torch::arange(B, torch::kInt64) * L).view({B, 1, 1});

  RoutingPlan plan;
  plan.expert_major = true;
  plan.token_EN = flat_BEC.permute({1, 0, 2}).reshape({E, B * C});
  plan.gate_EN = gate_BEC.permute({1, 0, 2}).reshape({E, B * C});
  plan.load_E = valid_BEC.sum(torch::IntArrayRef{0, 2});
  plan.stats.tokens_per_expert_E = plan.load_E;
  plan.stats.dropped_pairs = torch::zeros({}, torch::kInt64);
  plan.stats.zero_expert_tokens = (n_BL == 0).sum();
  plan.stats.capacity_B = capacity_B;
  plan.stats.num_tokens = B * L;
  if (p.compute_losses && p.z_loss_coeff > 0)
    plan.aux_loss = z_loss(logits_BLE.reshape({B * L, E}), p.z_loss_coeff);
  return plan;
}

}  // namespace ecdlm::moe
