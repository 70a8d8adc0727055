#include "ecdlm/dist/expert_parallel.h"

#include <chrono>
#include <cmath>
#include <numeric>

#include "ecdlm/dist/c10d_impl.h"
#include "ecdlm/util/compat_autocast.h"
#include "ecdlm/util/error.h"

namespace ecdlm::dist {
namespace {

using Clock = std::chrono::steady_clock;

torch::Tensor exchange(ProcessGroup& g, const torch::Tensor& x_ND, std::vector<int64_t> send, std::vector<int64_t> recv) {
  const int64_t D = x_ND.size(1);
  auto in = x_ND.contiguous();
  auto out = torch::empty({std::accumulate(recv.begin(), recv.end(), int64_t{0}), D}, in.options());
  if (g.size() == 1) return in.clone();
  // Gloo has no bfloat16 (bf16 autocast activations): move the same 2-byte words as half, an
  // all_to_all only copies them.
  const bool bf16 = in.scalar_type() == torch::kBFloat16;
  auto in_w = bf16 ? in.view(torch::kHalf) : in;
  auto out_w = bf16 ? out.view(torch::kHalf) : out;
  try {
    g.impl().pg->alltoall_base(out_w, in_w, recv, send)->wait();
  } catch (const std::exception& e) {
    g.rethrow_peer_failure("expert all_to_all", e);
  }
  return out;
}

// The exchange, timed, its bytes to other ranks counted into *st (if given).
torch::Tensor counted_exchange(ProcessGroup& g, const torch::Tensor& x_ND, const std::vector<int64_t>& send,
                               const std::vector<int64_t>& recv, ExpertParallelStats* st) {
  const auto t0 = Clock::now();
  auto out = exchange(g, x_ND, send, recv);
  if (st) {
    st->seconds += std::chrono::duration<double>(Clock::now() - t0).count();
    int64_t rows = 0;
    for (int r = 0; r < g.size(); ++r)
      if (r != g.rank()) rows += send[static_cast<size_t>(r)];
    st->bytes_sent += rows * x_ND.size(1) * static_cast<int64_t>(x_ND.element_size());
  }
  return out;
}

struct AllToAll : torch::autograd::Function<AllToAll> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x_ND, ProcessGroup* g,
                               std::vector<int64_t> send, std::vector<int64_t> recv, ExpertParallelStats* st) {
    ctx->saved_data["g"] = reinterpret_cast<int64_t>(g);
    ctx->saved_data["st"] = reinterpret_cast<int64_t>(st);
    ctx->saved_data["send"] = send;
    ctx->saved_data["recv"] = recv;
    return counted_exchange(*g, x_ND, send, recv, st);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad) {
    auto* g = reinterpret_cast<ProcessGroup*>(ctx->saved_data["g"].toInt());
    auto* st = reinterpret_cast<ExpertParallelStats*>(ctx->saved_data["st"].toInt());
    auto send = ctx->saved_data["send"].toIntVector();
    auto recv = ctx->saved_data["recv"].toIntVector();
    // The gradient of a row goes back to the rank it came from: the reverse exchange.
    return {counted_exchange(*g, grad[0], recv, send, st), torch::Tensor(), torch::Tensor(), torch::Tensor(),
            torch::Tensor()};
  }
};

}  // namespace

torch::Tensor all_to_all_rows(ProcessGroup& group, const torch::Tensor& x_ND, const std::vector<int64_t>& send,
                              const std::vector<int64_t>& recv) {
  if (static_cast<int>(send.size()) != group.size() || static_cast<int>(recv.size()) != group.size())
    throw std::invalid_argument("all_to_all_rows: one send and one receive count per rank");
  return all_to_all_rows(group, x_ND, send, recv, nullptr);
}

torch::Tensor all_to_all_rows(ProcessGroup& group, const torch::Tensor& x_ND, const std::vector<int64_t>& send,
                              const std::vector<int64_t>& recv, ExpertParallelStats* stats) {
  if (static_cast<int>(send.size()) != group.size() || static_cast<int>(recv.size()) != group.size())
    throw std::invalid_argument("all_to_all_rows: one send and one receive count per rank");
  return AllToAll::apply(x_ND, &group, send, recv, stats);
}

ExpertParallelMoe::ExpertParallelMoe(ProcessGroup& group, int64_t num_experts)
    : group_(group), num_experts_(num_experts), local_(0) {
  if (num_experts % group.size() != 0)
    fail("model config", "num_experts", std::to_string(num_experts) + " experts do not divide over " +
                                            std::to_string(group.size()) + " expert-parallel ranks",
         "choose --dist-ep dividing the expert count");
  local_ = num_experts / group.size();
}

torch::Tensor ExpertParallelMoe::forward(moe::MoeBlock& block, moe::Experts& local, const torch::Tensor& x_BLD,
                                         const moe::MoeForwardArgs& args, int64_t slots_per_expert) {
  if (local->num_experts() != local_)
    throw std::invalid_argument("ExpertParallelMoe: the local shard must hold E / EP experts");
  stats_ = {};
  const auto B = x_BLD.size(0), L = x_BLD.size(1), D = x_BLD.size(2);
  auto plan = block->route(x_BLD, args);
  auto x_TD = x_BLD.reshape({B * L, D});
  auto y_TD = plan.expert_major ? run_expert_major(x_TD, plan, local, slots_per_expert)
                                : run_token_major(x_TD, plan, local);
  // As MoeBlock::forward: the weighted sum in f32, cast back, then the shared expert.
  auto y_BLD = y_TD.to(x_BLD.scalar_type()).view({B, L, D});
  if (!block->shared_experts.is_empty()) y_BLD = y_BLD + block->shared_experts(x_BLD);
  return y_BLD;
}

torch::Tensor ExpertParallelMoe::run(const torch::Tensor& x_TD, const moe::RoutingPlan& plan, moe::Experts& local) {
  if (local->num_experts() != local_)
    throw std::invalid_argument("ExpertParallelMoe: the local shard must hold E / EP experts");
  if (!plan.expert_major) return run_token_major(x_TD, plan, local);
  int64_t slots = 0;
  if (plan.stats.capacity_B.defined()) {
    // Expert choice: C_b <= max(floor(L k_max / E), 1) <= L (capacity.h), so B * that bound is a
    // split size every rank knows before routing, whatever its sequences' mask ratios.
    const int64_t B = plan.stats.capacity_B.size(0), L = x_TD.size(0) / B;
    const auto bound = static_cast<int64_t>(std::floor(static_cast<double>(L) * k_max_ / num_experts_ + 1e-9));
    slots = B * std::min(L, std::max<int64_t>(1, bound));
  }
  return run_expert_major(x_TD, plan, local, slots);
}

torch::Tensor ExpertParallelMoe::payload(const torch::Tensor& x_ND) const {
  if (f32_payload_ || x_ND.scalar_type() != torch::kFloat32) return x_ND;
  if (compat::cpu_autocast_dtype() != torch::kBFloat16) return x_ND;
  // Autocast would make exactly this cast in the experts' first GEMM; made here, it halves the
  // bytes. Its backward turns the bf16 gradient that comes back into f32 for the gather.
  return x_ND.to(torch::kBFloat16);
}

torch::Tensor ExpertParallelMoe::run_expert_major(const torch::Tensor& x_TD, const moe::RoutingPlan& plan,
                                                  moe::Experts& local, int64_t slots_per_expert) {
  const int64_t EP = group_.size(), El = local_, D = x_TD.size(1), T = x_TD.size(0);
  auto token_EN = plan.token_EN, gate_EN = plan.gate_EN;
  int64_t N = token_EN.size(1);
  if (slots_per_expert > 0) {
    if (N > slots_per_expert)
      throw std::invalid_argument("ExpertParallelMoe: plan has " + std::to_string(N) + " slots per expert, above " +
                                  "the fixed " + std::to_string(slots_per_expert));
    // Empty slots (token 0, gate 0) up to the fixed count: computed, weighted by 0.
    const int64_t pad = slots_per_expert - N;
    token_EN = torch::cat({token_EN, torch::zeros({num_experts_, pad}, token_EN.options())}, 1);
    gate_EN = torch::cat({gate_EN, torch::zeros({num_experts_, pad}, gate_EN.options())}, 1);
    N = slots_per_expert;
  }
  // Fixed split sizes, known before routing: El experts x N slots to every rank, and back.
  const std::vector<int64_t> split(static_cast<size_t>(EP), El * N);
  auto x_END = moe::dispatch_slots(x_TD, token_EN);  // [E, N, D]: experts owned by rank r are rows r*El..
  auto recv = all_to_all_rows(group_, payload(x_END.reshape({num_experts_ * N, D})), split, split, &stats_);
  // [EP (source), El, N, D] -> each local expert's slots from every source: [El, EP * N, D].
  auto x_local = recv.view({EP, El, N, D}).permute({1, 0, 2, 3}).reshape({El, EP * N, D});
  auto y_local = local->forward_slots(x_local);
  auto y_send = y_local.reshape({El, EP, N, D}).permute({1, 0, 2, 3}).reshape({EP * El * N, D});
  auto y_END = all_to_all_rows(group_, y_send, split, split, &stats_).view({num_experts_, N, D});
  return moe::combine_slots(y_END, gate_EN, token_EN, T);
}

torch::Tensor ExpertParallelMoe::run_token_major(const torch::Tensor& x_TD, const moe::RoutingPlan& plan,
                                                 moe::Experts& local) {
  const int64_t EP = group_.size(), El = local_, E = num_experts_, D = x_TD.size(1), T = x_TD.size(0);
  const int64_t K = plan.idx_TK.size(1);
  // Pairs sorted by expert (stable), so each destination's rows are contiguous.
  auto flat_P = plan.idx_TK.reshape({-1});
  auto order_P = std::get<1>(torch::sort(flat_P, /*stable=*/true, 0, false));
  auto token_P = torch::div(order_P, K, "floor");
  auto counts_E = torch::bincount(flat_P, {}, E).to(torch::kInt64).contiguous();
  // Dropless: the sizes are data dependent, so the counts go first (E integers per rank).
  std::vector<int64_t> by_rank(static_cast<size_t>(EP), El);
  auto counts_in = counted_exchange(group_, counts_E.view({E, 1}), by_rank, by_rank, &stats_).view({EP, El}).contiguous();
  ++stats_.count_exchanges;
  std::vector<int64_t> send(static_cast<size_t>(EP), 0), recv(static_cast<size_t>(EP), 0);
  const int64_t* ce = counts_E.data_ptr<int64_t>();
  const int64_t* ci = counts_in.data_ptr<int64_t>();
  for (int64_t r = 0; r < EP; ++r)
    for (int64_t e = 0; e < El; ++e) send[r] += ce[r * El + e], recv[r] += ci[r * El + e];
  auto x_PD = payload(x_TD.index_select(0, token_P));
  auto x_recv = all_to_all_rows(group_, x_PD, send, recv, &stats_);  // grouped by (source, local expert)
  // Regroup by (local expert, source) for one GEMM chain per expert, and back afterwards.
  std::vector<int64_t> start(static_cast<size_t>(EP * El)), perm, counts_local(static_cast<size_t>(El), 0);
  int64_t off = 0;
  for (int64_t r = 0; r < EP; ++r)
    for (int64_t e = 0; e < El; ++e) start[r * El + e] = off, off += ci[r * El + e];
  for (int64_t e = 0; e < El; ++e)
    for (int64_t r = 0; r < EP; ++r) {
      for (int64_t i = 0; i < ci[r * El + e]; ++i) perm.push_back(start[r * El + e] + i);
      counts_local[e] += ci[r * El + e];
    }
  auto perm_t = torch::tensor(perm, torch::kInt64);
  auto y_sorted = local->forward_sorted(x_recv.index_select(0, perm_t), counts_local);
  auto y_recv = torch::zeros_like(y_sorted).index_copy(0, perm_t, y_sorted);
  auto y_PD = all_to_all_rows(group_, y_recv, recv, send, &stats_);
  auto g_P = plan.gate_TK.reshape({-1}).index_select(0, order_P).unsqueeze(-1);
  auto yw_PD = y_PD.to(torch::kFloat32) * g_P;
  return torch::zeros({T, D}, yw_PD.options()).index_add(0, token_P, yw_PD);
}

void copy_expert_shard(moe::Experts& full, moe::Experts& local, int64_t first) {
  torch::NoGradGuard ng;
  const int64_t n = local->num_experts();
  local->gate_proj.copy_(full->gate_proj.narrow(0, first, n));
  local->up_proj.copy_(full->up_proj.narrow(0, first, n));
  local->down_proj.copy_(full->down_proj.narrow(0, first, n));
}

}  // namespace ecdlm::dist
