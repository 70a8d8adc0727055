#include "ecdlm/moe/experts.h"

#include <algorithm>
#include <cmath>

#include "ecdlm/model/init.h"
#include "ecdlm/model/layers.h"
#include "ecdlm/kernels/small_m.h"

namespace ecdlm::moe {

ExpertsImpl::ExpertsImpl(int64_t E, int64_t D, int64_t F)
    : num_experts_(E), touched_E_(static_cast<size_t>(E), 0) {
  gate_proj = register_parameter("gate_proj", torch::empty({E, F, D}));
  up_proj = register_parameter("up_proj", torch::empty({E, F, D}));
  down_proj = register_parameter("down_proj", torch::empty({E, D, F}));
  if (!weight_init_enabled()) return;
  torch::NoGradGuard ng;
  gate_proj.normal_(0.0, 0.02);
  up_proj.normal_(0.0, 0.02);
  down_proj.normal_(0.0, 0.02);
}

torch::Tensor ExpertsImpl::forward_slots(const torch::Tensor& x_END) {
  std::fill(touched_E_.begin(), touched_E_.end(), 1);
  if (per_expert_bound()) {
    std::vector<torch::Tensor> y;
    y.reserve(static_cast<size_t>(num_experts_));
    for (int64_t e = 0; e < num_experts_; ++e) y.push_back(forward_one(e, x_END[e]));
    return torch::stack(y, 0);
  }
  auto h_ENF = torch::silu(torch::bmm(x_END, gate_proj.transpose(1, 2))) *
               torch::bmm(x_END, up_proj.transpose(1, 2));
  return torch::bmm(h_ENF, down_proj.transpose(1, 2));
}

torch::Tensor ExpertsImpl::forward_one(int64_t e, const torch::Tensor& x_ND) {
  touched_E_[static_cast<size_t>(e)] = 1;
  return kernels::swiglu(x_ND, gate_w(e), up_w(e), down_w(e));
}

torch::Tensor ExpertsImpl::forward_sorted(const torch::Tensor& x_PD, const std::vector<int64_t>& counts_E) {
  std::vector<int64_t> ids, counts;
  std::vector<torch::Tensor> g, u, d;
  for (int64_t e = 0; e < num_experts_; ++e) {
    const int64_t c = counts_E[static_cast<size_t>(e)];
    if (c == 0) continue;
    ids.push_back(e);
    counts.push_back(c);
    g.push_back(gate_w(e));
    u.push_back(up_w(e));
    d.push_back(down_w(e));
  }
  if (ids.empty()) return x_PD.new_empty({0, x_PD.size(1)});
  for (auto e : ids) touched_E_[static_cast<size_t>(e)] = 1;
  if (kernels::small_m_moe_applies(x_PD, counts, g, u, d)) return kernels::small_m_moe(x_PD, counts, g, u, d);
  std::vector<torch::Tensor> outs;
  outs.reserve(ids.size());
  int64_t off = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    outs.push_back(forward_one(ids[i], x_PD.narrow(0, off, counts[i])));
    off += counts[i];
  }
  return torch::cat(outs, 0);
}

void ExpertsImpl::bind_per_expert(std::vector<torch::Tensor> gate_FD, std::vector<torch::Tensor> up_FD,
                                  std::vector<torch::Tensor> down_DF) {
  const auto E = static_cast<size_t>(num_experts_);
  TORCH_CHECK(gate_FD.size() == E && up_FD.size() == E && down_DF.size() == E,
              "bind_per_expert: expected ", E, " experts");
  gate_e_ = std::move(gate_FD);
  up_e_ = std::move(up_FD);
  down_e_ = std::move(down_DF);
  torch::NoGradGuard ng;
  const auto opt = gate_e_[0].options();
  gate_proj.set_data(torch::empty({0, gate_proj.size(1), gate_proj.size(2)}, opt));
  up_proj.set_data(torch::empty({0, up_proj.size(1), up_proj.size(2)}, opt));
  down_proj.set_data(torch::empty({0, down_proj.size(1), down_proj.size(2)}, opt));
}

int64_t ExpertsImpl::bytes_per_expert() const {
  if (num_experts_ == 0) return 0;
  const auto g = gate_w(0), u = up_w(0), d = down_w(0);
  return (g.numel() + u.numel() + d.numel()) * static_cast<int64_t>(g.element_size());
}

int64_t ExpertsImpl::num_touched() const {
  return std::count(touched_E_.begin(), touched_E_.end(), uint8_t{1});
}

void ExpertsImpl::reset_touched() { std::fill(touched_E_.begin(), touched_E_.end(), 0); }

torch::Tensor dispatch_slots(const torch::Tensor& x_TD, const torch::Tensor& token_EN) {
  const auto E = token_EN.size(0), N = token_EN.size(1);
  return x_TD.index_select(0, token_EN.reshape({-1})).view({E, N, x_TD.size(1)});
}

torch::Tensor combine_slots(const torch::Tensor& y_END, const torch::Tensor& gate_EN,
                            const torch::Tensor& token_EN, int64_t T) {
  const auto D = y_END.size(2);
  auto weighted = (to_f32_or_wider(y_END) * gate_EN.unsqueeze(-1)).reshape({-1, D});
  return torch::zeros({T, D}, weighted.options()).index_add(0, token_EN.reshape({-1}), weighted);
}

torch::Tensor run_token_major(const torch::Tensor& x_TD, const torch::Tensor& idx_TK,
                              const torch::Tensor& gate_TK, Experts& experts) {
  const auto T = x_TD.size(0), K = idx_TK.size(1), D = x_TD.size(1);
  const auto E = experts->num_experts();
  auto flat = idx_TK.reshape({-1});
  auto order = std::get<1>(torch::sort(flat, /*stable=*/true, 0, false));
  auto token_of_pair = torch::div(order, K, "floor");
  auto counts = torch::bincount(flat, {}, E).contiguous();
  auto x_sorted = x_TD.index_select(0, token_of_pair);
  const int64_t* cnt = counts.data_ptr<int64_t>();
  auto y_sorted = to_f32_or_wider(experts->forward_sorted(x_sorted, std::vector<int64_t>(cnt, cnt + E)));
  auto g_sorted = gate_TK.reshape({-1}).index_select(0, order).unsqueeze(-1);
  return torch::zeros({T, D}, y_sorted.options()).index_add(0, token_of_pair, y_sorted * g_sorted);
}

torch::Tensor run_plan(const torch::Tensor& x_TD, const RoutingPlan& plan, Experts& experts) {
  if (!plan.expert_major) return run_token_major(x_TD, plan.idx_TK, plan.gate_TK, experts);
  auto y_END = experts->forward_slots(dispatch_slots(x_TD, plan.token_EN));
  return combine_slots(y_END, plan.gate_EN, plan.token_EN, x_TD.size(0));
}

torch::Tensor run_plan_reference(const torch::Tensor& x_TD, const RoutingPlan& plan,
                                 Experts& experts) {
  const auto T = x_TD.size(0), D = x_TD.size(1);
  const auto E = experts->num_experts();
  auto out = torch::zeros({T, D}, to_f32_or_wider(x_TD).options());
  for (int64_t e = 0; e < E; ++e) {
    torch::Tensor tok, gate;
    if (plan.expert_major) {
      tok = plan.token_EN[e];
      gate = plan.gate_EN[e];
    } else {
      auto hit_TK = plan.idx_TK == e;
      auto rows = hit_TK.any(1).nonzero().squeeze(1);
      tok = rows;
      gate = (plan.gate_TK * hit_TK).sum(1).index_select(0, rows);
    }
    if (tok.numel() == 0) continue;
    auto y = experts->forward_one(e, x_TD.index_select(0, tok)).to(out.scalar_type());
    out = out.index_add(0, tok, y * gate.unsqueeze(-1));
  }
  return out;
}

}  // namespace ecdlm::moe
