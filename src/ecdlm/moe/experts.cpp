#include "ecdlm/moe/experts.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "ecdlm/kernels/convert.h"
#include "ecdlm/kernels/quant.h"
#include "ecdlm/kernels/small_m.h"
#include "ecdlm/nn/dtype.h"
#include "ecdlm/nn/init.h"
#include "ecdlm/nn/linear.h"

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
  if (quantized()) {
    const auto i = static_cast<size_t>(e);
    // h stays f32 between the products; one rounding to x's dtype at the end.
    const bool bf16 = x_ND.scalar_type() == torch::kBFloat16;
    const auto x = bf16 ? x_ND : x_ND.to(torch::kFloat32);
    return kernels::quant_swiglu(x, gate_q_[i], up_q_[i], down_q_[i], x.scalar_type()).to(x_ND.scalar_type());
  }
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
    if (quantized()) continue;
    g.push_back(gate_w(e));
    u.push_back(up_w(e));
    d.push_back(down_w(e));
  }
  if (ids.empty()) return x_PD.new_empty({0, x_PD.size(1)});
  for (auto e : ids) touched_E_[static_cast<size_t>(e)] = 1;
  if (quantized() && (x_PD.scalar_type() == torch::kBFloat16 || x_PD.scalar_type() == torch::kFloat32)) {
    // All experts in one parallel region, each row's activations quantized once (kernels/quant.h).
    kernels::QuantExperts ex;
    for (auto e : ids) {
      ex.gate.push_back(&gate_q_[size_t(e)]);
      ex.up.push_back(&up_q_[size_t(e)]);
      ex.down.push_back(&down_q_[size_t(e)]);
    }
    return kernels::quant_moe(x_PD, counts, ex, x_PD.scalar_type());
  }
  if (!quantized() && kernels::small_m_moe_applies(x_PD, counts, g, u, d)) return kernels::small_m_moe(x_PD, counts, g, u, d);
  if (!quantized() && kernels::f32_moe_applies(x_PD, counts, g, u, d)) return kernels::f32_moe(x_PD, counts, g, u, d);
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

void ExpertsImpl::bind_quantized(std::vector<io::QuantWeight> gate_FD, std::vector<io::QuantWeight> up_FD,
                                 std::vector<io::QuantWeight> down_DF) {
  const auto E = static_cast<size_t>(num_experts_);
  TORCH_CHECK(gate_FD.size() == E && up_FD.size() == E && down_DF.size() == E, "bind_quantized: expected ", E,
              " experts");
  const int64_t F = gate_proj.size(1), D = gate_proj.size(2);
  for (size_t e = 0; e < E; ++e)
    TORCH_CHECK(gate_FD[e].N == F && gate_FD[e].K == D && up_FD[e].N == F && up_FD[e].K == D && down_DF[e].N == D &&
                    down_DF[e].K == F,
                "bind_quantized: expert ", e, " has the wrong shape");
  gate_q_ = std::move(gate_FD);
  up_q_ = std::move(up_FD);
  down_q_ = std::move(down_DF);
  torch::NoGradGuard ng;
  for (auto* p : {&gate_proj, &up_proj, &down_proj}) {
    p->set_data(torch::empty({0, p->size(1), p->size(2)}, p->options()));
    p->set_requires_grad(false);
  }
}

int64_t ExpertsImpl::bytes_per_expert() const {
  if (num_experts_ == 0) return 0;
  if (quantized()) return gate_q_[0].bytes() + up_q_[0].bytes() + down_q_[0].bytes();
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

namespace {

// Pairs sorted by expert, stable in the flat pair index t * K + k (as torch::sort(stable)).
struct SortedPairs {
  std::vector<int64_t> counts_E, pair_of_P;
};

SortedPairs sort_pairs(const int64_t* idx, int64_t P, int64_t E) {
  SortedPairs s{std::vector<int64_t>(static_cast<size_t>(E), 0), std::vector<int64_t>(static_cast<size_t>(P))};
  for (int64_t i = 0; i < P; ++i) {
    TORCH_CHECK(idx[i] >= 0 && idx[i] < E, "run_token_major: expert id ", idx[i], " outside [0, ", E, ")");
    ++s.counts_E[size_t(idx[i])];
  }
  std::vector<int64_t> next(static_cast<size_t>(E), 0);
  for (int64_t e = 1; e < E; ++e) next[size_t(e)] = next[size_t(e - 1)] + s.counts_E[size_t(e - 1)];
  for (int64_t i = 0; i < P; ++i) s.pair_of_P[size_t(next[size_t(idx[i])]++)] = i;
  return s;
}

inline const uint16_t* as_bits(const at::BFloat16* y) { return reinterpret_cast<const uint16_t*>(y); }
inline const float* as_bits(const float* y) { return y; }

// out[t] = sum over t's pairs, in sorted order, of float(y) * gate: the same additions, in the same
// order, as index_add over the sorted rows, so the result equals the torch path bit for bit.
template <typename Y>
void combine_sorted(const Y* y_PD, const float* gate, const std::vector<int64_t>& pair_of_P, int64_t T, int64_t K,
                    int64_t D, float* out_TD) {
  const auto P = static_cast<int64_t>(pair_of_P.size());
  std::vector<int64_t> row_of_pair(static_cast<size_t>(P));
  for (int64_t r = 0; r < P; ++r) row_of_pair[size_t(pair_of_P[size_t(r)])] = r;
  at::parallel_for(0, T, 8, [&](int64_t t0, int64_t t1) {
    std::vector<int64_t> rows(static_cast<size_t>(K));
    for (int64_t t = t0; t < t1; ++t) {
      for (int64_t k = 0; k < K; ++k) rows[size_t(k)] = row_of_pair[size_t(t * K + k)];
      std::sort(rows.begin(), rows.end());
      float* o = out_TD + t * D;
      std::fill(o, o + D, 0.0f);
      for (int64_t r : rows) kernels::add_scaled(as_bits(y_PD + r * D), gate[pair_of_P[size_t(r)]], D, o);
    }
  });
}

// Sort, gather and combine without the ~12 torch ops of the generic path (inference only).
bool token_major_direct(const torch::Tensor& x_TD, const torch::Tensor& idx_TK, const torch::Tensor& gate_TK) {
  const auto no_grad = [](const torch::Tensor& t) { return !(torch::GradMode::is_enabled() && t.requires_grad()); };
  const auto dt = x_TD.scalar_type();
  return (dt == torch::kBFloat16 || dt == torch::kFloat32) && x_TD.dim() == 2 && x_TD.is_contiguous() &&
         x_TD.device().is_cpu() && idx_TK.scalar_type() == torch::kInt64 && gate_TK.scalar_type() == torch::kFloat32 &&
         idx_TK.dim() == 2 && gate_TK.sizes() == idx_TK.sizes() && idx_TK.size(0) == x_TD.size(0) && no_grad(x_TD) &&
         no_grad(gate_TK);
}

torch::Tensor run_token_major_direct(const torch::Tensor& x_TD, const torch::Tensor& idx_TK,
                                     const torch::Tensor& gate_TK, Experts& experts) {
  const int64_t T = x_TD.size(0), K = idx_TK.size(1), D = x_TD.size(1), P = T * K;
  const auto idx = idx_TK.contiguous();
  const auto gate = gate_TK.contiguous();
  const auto pairs = sort_pairs(idx.data_ptr<int64_t>(), P, experts->num_experts());
  auto x_PD = torch::empty({P, D}, x_TD.options());
  const auto row_bytes = static_cast<size_t>(D) * x_TD.element_size();
  const auto* xs = static_cast<const char*>(x_TD.data_ptr());
  auto* xd = static_cast<char*>(x_PD.data_ptr());
  for (int64_t r = 0; r < P; ++r)
    std::memcpy(xd + r * row_bytes, xs + (pairs.pair_of_P[size_t(r)] / K) * row_bytes, row_bytes);
  auto y_PD = experts->forward_sorted(x_PD, pairs.counts_E).contiguous();
  auto out_TD = torch::empty({T, D}, torch::kFloat32);
  if (y_PD.scalar_type() == torch::kBFloat16)
    combine_sorted(y_PD.data_ptr<at::BFloat16>(), gate.data_ptr<float>(), pairs.pair_of_P, T, K, D,
                   out_TD.data_ptr<float>());
  else
    combine_sorted(y_PD.to(torch::kFloat32).data_ptr<float>(), gate.data_ptr<float>(), pairs.pair_of_P, T, K, D,
                   out_TD.data_ptr<float>());
  return out_TD;
}

}  // namespace

torch::Tensor run_token_major(const torch::Tensor& x_TD, const torch::Tensor& idx_TK,
                              const torch::Tensor& gate_TK, Experts& experts) {
  if (token_major_direct(x_TD, idx_TK, gate_TK)) return run_token_major_direct(x_TD, idx_TK, gate_TK, experts);
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
