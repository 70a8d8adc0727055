#include "ecdlm/moe/router_infer.h"

#include <algorithm>
#include <limits>
#include <numeric>
#include <vector>

#include "ecdlm/util/compat.h"

namespace ecdlm::moe {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Descending by value, then ascending by index: the order of a stable descending sort.
struct ByValueThenIndex {
  const float* v;
  bool operator()(int64_t a, int64_t b) const { return v[a] > v[b] || (v[a] == v[b] && a < b); }
};

}  // namespace

bool route_infer_applies(const torch::Tensor& logits_TE, const TokenChoiceParams& p) {
  return p.capacity_factor <= 0 && !p.compute_losses && logits_TE.dim() == 2 &&
         logits_TE.scalar_type() == torch::kFloat32 && logits_TE.device().is_cpu() &&
         !(torch::GradMode::is_enabled() && logits_TE.requires_grad()) && p.k >= 1 && p.k <= logits_TE.size(1);
}

RoutingPlan route_token_choice_infer(const torch::Tensor& logits_TE, const torch::Tensor& bias_E,
                                     const TokenChoiceParams& p, const torch::Tensor& allowed_TE) {
  TORCH_CHECK(route_infer_applies(logits_TE, p), "route_token_choice_infer: inputs it does not take");
  compat::AutocastOff fp32;
  const int64_t T = logits_TE.size(0), E = logits_TE.size(1), K = p.k;
  // The score function stays one torch op, so scores match route_token_choice bit for bit.
  const auto scores_TE = (p.score == ScoreFn::kSigmoid ? torch::sigmoid(logits_TE) : torch::softmax(logits_TE, -1))
                             .contiguous();
  const auto bias = bias_E.defined() ? bias_E.to(torch::kFloat32).contiguous() : torch::Tensor();
  const auto allowed = allowed_TE.defined() ? allowed_TE.to(torch::kBool).contiguous() : torch::Tensor();
  TORCH_CHECK(!bias.defined() || bias.numel() == E, "route_token_choice_infer: bias has ", bias.numel(),
              " entries for ", E, " experts");
  TORCH_CHECK(!allowed.defined() || allowed.sizes() == logits_TE.sizes(), "route_token_choice_infer: allowed mask shape");
  const bool grouped = p.n_group > 1 && p.topk_group < p.n_group;
  const int64_t gsz = grouped ? E / p.n_group : E;

  auto idx_TK = torch::empty({T, K}, torch::kInt64);
  auto gate_TK = torch::empty({T, K}, torch::kFloat32);
  auto load_E = torch::zeros({E}, torch::kInt64);
  const float* s = scores_TE.data_ptr<float>();
  const float* b = bias.defined() ? bias.data_ptr<float>() : nullptr;
  const bool* ok = allowed.defined() ? allowed.data_ptr<bool>() : nullptr;
  int64_t* idx = idx_TK.data_ptr<int64_t>();
  float* gate = gate_TK.data_ptr<float>();
  int64_t* load = load_E.data_ptr<int64_t>();

  std::vector<float> biased(static_cast<size_t>(E)), key(static_cast<size_t>(E));
  std::vector<float> group_score(static_cast<size_t>(std::max<int64_t>(p.n_group, 1)));
  std::vector<int64_t> order(static_cast<size_t>(E)), gorder(group_score.size());
  std::vector<char> keep(group_score.size());
  for (int64_t t = 0; t < T; ++t) {
    const float* st = s + t * E;
    for (int64_t e = 0; e < E; ++e) {
      biased[size_t(e)] = b ? st[e] + b[e] : st[e];
      key[size_t(e)] = ok && !ok[t * E + e] ? kNegInf : biased[size_t(e)];
    }
    if (grouped) {
      // A group scores the sum of its top two keys (-inf with fewer than two allowed experts).
      for (int64_t g = 0; g < p.n_group; ++g) {
        const float* kg = key.data() + g * gsz;
        float top1 = kNegInf, top2 = kNegInf;
        for (int64_t j = 0; j < gsz; ++j) {
          if (kg[j] > top1) {
            top2 = top1;
            top1 = kg[j];
          } else if (kg[j] > top2) {
            top2 = kg[j];
          }
        }
        group_score[size_t(g)] = gsz >= 2 ? top1 + top2 : top1;
      }
      std::iota(gorder.begin(), gorder.end(), 0);
      std::partial_sort(gorder.begin(), gorder.begin() + p.topk_group, gorder.end(), ByValueThenIndex{group_score.data()});
      std::fill(keep.begin(), keep.end(), 0);
      for (int64_t i = 0; i < p.topk_group; ++i) keep[size_t(gorder[size_t(i)])] = 1;
      for (int64_t e = 0; e < E; ++e)
        if (!keep[size_t(e / gsz)]) key[size_t(e)] = kNegInf;
    }
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + K, order.end(), ByValueThenIndex{key.data()});
    // Gates from the unmasked scores (biased ones where the model weighs with them).
    float sum = 0.0f;
    for (int64_t j = 0; j < K; ++j) {
      const int64_t e = order[size_t(j)];
      idx[t * K + j] = e;
      gate[t * K + j] = p.bias_in_gate ? biased[size_t(e)] : st[e];
      sum += gate[t * K + j];
      ++load[e];
    }
    if (p.norm_topk_prob)
      for (int64_t j = 0; j < K; ++j) gate[t * K + j] = gate[t * K + j] / (sum + 1e-20f);
    if (p.scaling != 1.0)
      for (int64_t j = 0; j < K; ++j) gate[t * K + j] = gate[t * K + j] * static_cast<float>(p.scaling);
  }

  RoutingPlan plan;
  plan.expert_major = false;
  plan.idx_TK = idx_TK;
  plan.gate_TK = gate_TK;
  plan.load_E = load_E;
  plan.stats.num_tokens = T;
  plan.stats.tokens_per_expert_E = load_E;
  plan.stats.dropped_pairs = torch::zeros({}, torch::kInt64);
  plan.stats.zero_expert_tokens = torch::zeros({}, torch::kInt64);
  return plan;
}

}  // namespace ecdlm::moe
