#include "ecdlm/train/data_parallel.h"

#include <cmath>
#include <filesystem>
#include <functional>
#include <sstream>

#include "ecdlm/data/shards.h"
#include "ecdlm/nn/init.h"
#include "ecdlm/train/trainer.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/fs.h"
#include "ecdlm/util/log.h"

namespace ecdlm {
namespace fs = std::filesystem;

namespace {

std::string digest(const std::string& s) {
  std::ostringstream os;
  os << std::hex << std::hash<std::string>{}(s);
  return os.str();
}

}  // namespace

std::unique_ptr<DataParallel> start_data_parallel(const ModelConfig& cfg, const TrainParams& p,
                                                  const DistOptions& opt) {
  const auto env = dist::DistEnv::from_environment();
  if (opt.ep < 1) fail("", "--dist-ep", "must be >= 1", "1 (no expert parallelism) or a divisor of WORLD_SIZE");
  // Both checks are pure arithmetic on what every rank knows: all ranks fail alike, before joining.
  if (env.world_size % opt.ep != 0)
    fail("environment", "--dist-ep",
         "WORLD_SIZE " + std::to_string(env.world_size) + " does not divide by --dist-ep " + std::to_string(opt.ep) +
             (env.distributed() ? "" : " (no torchrun environment: a single process)"),
         "launch DP x EP ranks, e.g. `ecdlm launch --nproc-per-node " + std::to_string(opt.ep) + " -- train --dist-ep " +
             std::to_string(opt.ep) + " ...`");
  if (opt.ep > 1 && (cfg.num_experts <= 0 || cfg.num_experts % opt.ep != 0))
    fail("model config", "num_experts",
         std::to_string(cfg.num_experts) + " routed experts do not divide over --dist-ep " + std::to_string(opt.ep),
         "choose --dist-ep dividing the expert count (or --moe-experts a multiple of it)");
  if (!env.distributed()) return nullptr;
  auto dp = std::make_unique<DataParallel>();
  dp->group = dist::ProcessGroup::join(env, opt.timeout_s);
  auto& g = *dp->group;
  // Mismatches fail on every rank at once, before anything is written.
  g.check_same("model config", "hash " + digest(cfg.to_json().dump()),
               "start every rank with the same --config and --moe-* flags");
  g.check_same("--train-seed", std::to_string(p.seed), "start every rank with the same --train-seed");
  // The data must be the same shards; the path may differ between machines.
  auto tr = data::TokenShard::open(p.data_dir, "train");
  auto va = data::TokenShard::open(p.data_dir, "val");
  g.check_same("--data", std::to_string(tr.size()) + " train / " + std::to_string(va.size()) +
                             " val tokens, meta.json hash " +
                             digest(read_text_file((fs::path(p.data_dir) / "meta.json").string())),
               "give every rank the same prepared data directory (--data)");
  auto tj = p.to_json();
  tj.erase("data_dir");
  g.check_same("train config", "hash " + digest(tj.dump()),
               "start every rank with the same --config and --train-* flags");
  if (p.batch_size % g.size() != 0)
    fail("", "--train-batch-size",
         "the global batch " + std::to_string(p.batch_size) + " does not divide by WORLD_SIZE " +
             std::to_string(g.size()),
         "use a multiple of " + std::to_string(g.size()) + " (each rank trains batch / WORLD_SIZE rows)");
  g.check_same("--dist-ep", std::to_string(opt.ep), "start every rank with the same --dist-ep");
  // The all_to_all needs the same payload dtype on every rank.
  g.check_same("--dist-ep-f32-payload", opt.ep_f32_payload ? "on" : "off",
               "start every rank with the same --dist-ep-f32-payload");
  dp->count = p.batch_size / g.size();
  dp->first = g.rank() * dp->count;
  LOG_INFO("dist: data parallel, rank " << g.rank() << " trains rows [" << dp->first << ", "
                                        << dp->first + dp->count << ") of each global batch of " << p.batch_size);
  if (opt.ep > 1) {
    dp->ep = opt.ep;
    const int ep = static_cast<int>(opt.ep), ndp = g.size() / ep;
    dp->ep_index = g.rank() % ep;
    dp->dp_index = g.rank() / ep;
    std::vector<int> ep_ranks, replica_ranks;
    for (int i = 0; i < ep; ++i) ep_ranks.push_back(static_cast<int>(dp->dp_index) * ep + i);
    for (int d = 0; d < ndp; ++d) replica_ranks.push_back(d * ep + static_cast<int>(dp->ep_index));
    dp->ep_group = g.subgroup("ep" + std::to_string(dp->dp_index), ep_ranks);
    if (ndp > 1) dp->replica_group = g.subgroup("replica" + std::to_string(dp->ep_index), replica_ranks);
    dp->exchange = std::make_shared<dist::ExpertParallelMoe>(*dp->ep_group, cfg.num_experts);
    dp->exchange->set_capacity_k_max(make_schedule(cfg).k_max());
    dp->exchange->set_f32_payload(opt.ep_f32_payload);
    LOG_INFO("dist: expert parallel " << ep << " x data parallel " << ndp << ": rank " << g.rank() << " holds experts ["
                                      << dp->exchange->first_expert() << ", "
                                      << dp->exchange->first_expert() + dp->exchange->local_experts() << ") of "
                                      << cfg.num_experts << " in every MoE layer");
  }
  return dp;
}

namespace {

std::string state_key(const torch::Tensor& t) { return c10::guts::to_string(t.unsafeGetTensorImpl()); }

std::vector<torch::Tensor> expert_tensors(MoeDlm& model) {
  std::vector<torch::Tensor> out;
  for (auto& b : model->moe_blocks())
    for (auto* t : {&b->experts->gate_proj, &b->experts->up_proj, &b->experts->down_proj}) out.push_back(*t);
  return out;
}

bool is_expert(const std::vector<torch::Tensor>& experts, const torch::Tensor& t) {
  for (const auto& e : experts)
    if (e.is_same(t)) return true;
  return false;
}

}  // namespace

std::unique_ptr<torch::optim::AdamW> shard_experts(DataParallel& dp, MoeDlm& model, torch::optim::AdamW& opt,
                                                   const TrainParams& p) {
  const int64_t El = dp.exchange->local_experts(), first = dp.exchange->first_expert();
  std::vector<std::pair<torch::Tensor, torch::Tensor>> moved;  // (full, shard) of every expert matrix
  for (auto& b : model->moe_blocks()) {
    auto& full = b->experts;
    moe::Experts local{nullptr};
    {
      SkipWeightInit skip;  // copied from the full experts just below (and the RNG stays untouched)
      local = moe::Experts(El, full->gate_proj.size(2), full->gate_proj.size(1));
    }
    dist::copy_expert_shard(full, local, first);
    for (auto* t : {&local->gate_proj, &local->up_proj, &local->down_proj}) t->set_requires_grad(full->gate_proj.requires_grad());
    moved.push_back({full->gate_proj, local->gate_proj});
    moved.push_back({full->up_proj, local->up_proj});
    moved.push_back({full->down_proj, local->down_proj});
    b->experts = b->replace_module("experts", local);
    b->set_expert_exchange(dp.exchange);
  }
  auto sharded = make_optimizer(model, p);
  // Carry the state: the same tensors for dense parameters, the shard's slice for experts.
  auto& old_state = opt.state();
  auto& new_state = sharded->state();
  for (const auto& t : model->parameters()) {
    torch::Tensor src = t;
    bool expert = false;
    for (const auto& [full, shard] : moved)
      if (shard.is_same(t)) src = full, expert = true;
    auto it = old_state.find(state_key(src));
    if (it == old_state.end()) continue;
    const auto& st = static_cast<const torch::optim::AdamWParamState&>(*it->second);
    auto ns = std::make_unique<torch::optim::AdamWParamState>();
    ns->step(st.step());
    ns->exp_avg(expert ? st.exp_avg().narrow(0, first, El).clone() : st.exp_avg());
    ns->exp_avg_sq(expert ? st.exp_avg_sq().narrow(0, first, El).clone() : st.exp_avg_sq());
    new_state[state_key(t)] = std::move(ns);
  }
  return sharded;
}

void attach_reducer(DataParallel& dp, MoeDlm& model) {
  // Expert shards differ by rank (each was cut from the same seeded or loaded full model).
  const auto experts = dp.expert_parallel() ? expert_tensors(model) : std::vector<torch::Tensor>();
  std::vector<torch::Tensor> all, trainable;
  for (auto& t : model->parameters())
    if (!is_expert(experts, t)) all.push_back(t);
  for (auto& t : model->buffers()) all.push_back(t);
  dist::broadcast_from_rank0(*dp.group, all);
  dp.expert_params.clear();
  for (auto& t : model->parameters())
    if (t.requires_grad()) (is_expert(experts, t) ? dp.expert_params : trainable).push_back(t);
  dp.reducer = std::make_unique<dist::GradReducer>(*dp.group, trainable);
  if (dp.replica_group && !dp.expert_params.empty())
    dp.expert_reducer = std::make_unique<dist::GradReducer>(*dp.replica_group, dp.expert_params, 8 << 20,
                                                            static_cast<double>(dp.group->size()));
}

void finish_expert_grads(DataParallel& dp) {
  if (dp.expert_reducer) {
    dp.expert_reducer->finish();
    return;
  }
  // One replica (DP = 1): each shard already holds the sum over every rank's tokens.
  torch::NoGradGuard ng;
  for (auto& t : dp.expert_params)
    if (t.grad().defined()) t.mutable_grad().div_(static_cast<double>(dp.group->size()));
}

double clip_grad_norm_global(DataParallel& dp, MoeDlm& model, double max_norm) {
  const auto experts = expert_tensors(model);
  torch::NoGradGuard ng;
  auto sq = torch::zeros({2}, torch::kFloat64);  // dense, this rank's expert shards
  std::vector<torch::Tensor> grads;
  for (auto& t : model->parameters()) {
    if (!t.grad().defined()) continue;
    grads.push_back(t.grad());
    const double n = t.grad().norm().item<double>();
    sq[is_expert(experts, t) ? 1 : 0] += n * n;
  }
  auto shard_sq = sq.narrow(0, 1, 1);
  dp.ep_group->all_reduce_sum(shard_sq);
  const double total = std::sqrt(sq.sum().item<double>());
  const double coef = max_norm / (total + 1e-6);
  if (coef < 1.0)
    for (auto& g : grads) g.mul_(coef);
  return total;
}

FullCopy gather_full(DataParallel& dp, MoeDlm& model, torch::optim::AdamW* opt, const TrainParams& p) {
  FullCopy out;
  if (dp.dp_index != 0) return out;
  torch::NoGradGuard ng;
  // One flat f32 buffer per rank: every expert matrix, then (with opt) its two AdamW moments.
  const auto experts = expert_tensors(model);
  std::vector<torch::Tensor> parts;
  bool moments = false;
  if (opt) {
    const auto& st = opt->state();
    moments = !experts.empty() && st.count(state_key(experts[0])) > 0;
  }
  for (const auto& t : experts) {
    parts.push_back(t.detach().to(torch::kFloat32).reshape({-1}));
    if (moments) {
      const auto& s = static_cast<const torch::optim::AdamWParamState&>(*opt->state().at(state_key(t)));
      parts.push_back(s.exp_avg().reshape({-1}));
      parts.push_back(s.exp_avg_sq().reshape({-1}));
    }
  }
  auto all = dp.ep_group->all_gather(torch::cat(parts));  // [EP, n]
  if (!dp.is_rank0()) return out;
  int64_t steps = 0;
  if (moments)
    steps = static_cast<const torch::optim::AdamWParamState&>(*opt->state().at(state_key(experts[0]))).step();
  {
    SkipWeightInit skip;  // every tensor is copied below
    out.model = MoeDlm(model->config());
  }
  auto src_params = model->named_parameters();
  auto src_buffers = model->named_buffers();
  for (auto& kv : out.model->named_buffers()) kv.value().copy_(src_buffers[kv.key()]);
  // Expert matrices in the order expert_tensors() lists them: the shards concatenated over the EP ranks.
  const auto full_experts = expert_tensors(out.model);
  std::vector<torch::Tensor> exp_avg(experts.size()), exp_avg_sq(experts.size());
  int64_t off = 0;
  for (size_t i = 0; i < experts.size(); ++i) {
    const int64_t n = experts[i].numel();
    std::vector<torch::Tensor> w, m, v;
    for (int64_t r = 0; r < dp.ep; ++r) {
      auto row = all[r];
      w.push_back(row.narrow(0, off, n).view(experts[i].sizes()));
      if (moments) {
        m.push_back(row.narrow(0, off + n, n).view(experts[i].sizes()));
        v.push_back(row.narrow(0, off + 2 * n, n).view(experts[i].sizes()));
      }
    }
    full_experts[i].copy_(torch::cat(w));
    full_experts[i].set_requires_grad(experts[i].requires_grad());
    if (moments) exp_avg[i] = torch::cat(m), exp_avg_sq[i] = torch::cat(v);
    off += (moments ? 3 : 1) * n;
  }
  for (auto& kv : out.model->named_parameters()) {
    if (is_expert(full_experts, kv.value())) continue;
    kv.value().copy_(src_params[kv.key()]);
    kv.value().set_requires_grad(src_params[kv.key()].requires_grad());
  }
  if (!opt) return out;
  // The optimizer a single process would have: same groups and order, the same state per tensor.
  out.opt = make_optimizer(out.model, p);
  auto& state = out.opt->state();
  for (size_t i = 0; i < experts.size() && moments; ++i) {
    auto ns = std::make_unique<torch::optim::AdamWParamState>();
    ns->step(steps);
    ns->exp_avg(exp_avg[i]);
    ns->exp_avg_sq(exp_avg_sq[i]);
    state[state_key(full_experts[i])] = std::move(ns);
  }
  for (auto& kv : out.model->named_parameters()) {
    if (is_expert(full_experts, kv.value())) continue;
    auto it = opt->state().find(state_key(src_params[kv.key()]));
    if (it == opt->state().end()) continue;
    const auto& st = static_cast<const torch::optim::AdamWParamState&>(*it->second);
    auto ns = std::make_unique<torch::optim::AdamWParamState>();
    ns->step(st.step());
    ns->exp_avg(st.exp_avg());
    ns->exp_avg_sq(st.exp_avg_sq());
    state[state_key(kv.value())] = std::move(ns);
  }
  return out;
}

void update_expert_biases_global(DataParallel& dp, MoeDlm& model, std::vector<torch::Tensor> loads, double rate) {
  auto blocks = model->moe_blocks();
  std::vector<torch::Tensor> defined;
  for (auto& l : loads)
    if (l.defined()) defined.push_back(l);
  dp.group->all_reduce_sum(defined);
  torch::NoGradGuard ng;
  for (size_t i = 0; i < blocks.size() && i < loads.size(); ++i) {
    auto bias = blocks[i]->gate->expert_bias;
    if (loads[i].defined() && bias.defined()) {
      auto load = loads[i].to(torch::kFloat32);
      bias.add_(rate * torch::sign(load.mean() - load));
    }
    blocks[i]->update_expert_bias(0.0);  // drops the local accumulator, changes nothing else
  }
}

double agree(DataParallel* dp, double v) {
  if (!dp) return v;
  auto t = torch::tensor({v}, torch::kFloat64);
  dp->group->broadcast(t, 0);
  return t.item<double>();
}

}  // namespace ecdlm
