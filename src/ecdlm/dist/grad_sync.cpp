#include "ecdlm/dist/grad_sync.h"

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <chrono>
#include <mutex>

#include "ecdlm/dist/c10d_impl.h"

namespace ecdlm::dist {

struct GradReducer::State {
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
  std::vector<torch::Tensor> params;
  std::vector<std::vector<size_t>> buckets;  // param indices, in backward order
  std::vector<size_t> bucket_of;             // param -> bucket
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators;  // kept alive: they hold the hooks
  std::mutex mu;
  bool armed = false;
  std::vector<int64_t> pending;              // gradients still to come, per bucket
  std::vector<torch::Tensor> flat;           // per bucket, once started
  std::vector<c10::intrusive_ptr<c10d::Work>> work;
  size_t next = 0;                           // first bucket not started
  int64_t overlapped = 0;

  // Flattens bucket b's gradients (zeros where a parameter has none) and starts its all-reduce.
  void start(size_t b) {
    std::vector<torch::Tensor> parts;
    for (size_t i : buckets[b]) {
      const auto& g = params[i].grad();
      parts.push_back(g.defined() ? g.detach().reshape({-1}) : torch::zeros({params[i].numel()}, params[i].options()));
    }
    flat[b] = torch::cat(parts);
    std::vector<torch::Tensor> v{flat[b]};
    work[b] = pg->allreduce(v);
  }
  // Starts every ready bucket in order (the collective sequence must be the same on all ranks).
  void start_ready() {
    while (next < buckets.size() && pending[next] == 0) {
      start(next++);
      ++overlapped;
    }
  }
};

namespace {

struct ReadyHook : torch::autograd::FunctionPostHook {
  ReadyHook(std::weak_ptr<GradReducer::State> s, size_t param) : state(std::move(s)), index(param) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list&) override {
    auto s = state.lock();
    if (!s) return outputs;
    std::lock_guard<std::mutex> lock(s->mu);
    if (!s->armed) return outputs;
    const size_t b = s->bucket_of[index];
    if (--s->pending[b] == 0) s->start_ready();
    return outputs;
  }
  std::weak_ptr<GradReducer::State> state;
  size_t index;
};

}  // namespace

GradReducer::GradReducer(ProcessGroup& group, std::vector<torch::Tensor> params, int64_t bucket_bytes,
                         double divisor)
    : group_(group), state_(std::make_shared<State>()), divisor_(divisor > 0 ? divisor : group.size()) {
  auto& s = *state_;
  s.pg = group.impl().pg;
  s.params = std::move(params);
  s.bucket_of.resize(s.params.size());
  int64_t bytes = 0;
  for (size_t k = s.params.size(); k-- > 0;) {
    const int64_t nb = s.params[k].numel() * static_cast<int64_t>(s.params[k].element_size());
    if (s.buckets.empty() || bytes + nb > bucket_bytes) {
      s.buckets.emplace_back();
      bytes = 0;
    }
    s.buckets.back().push_back(k);
    s.bucket_of[k] = s.buckets.size() - 1;
    bytes += nb;
  }
  for (size_t k = 0; k < s.params.size(); ++k) {
    auto acc = torch::autograd::impl::grad_accumulator(s.params[k]);
    acc->add_post_hook(std::make_unique<ReadyHook>(state_, k));
    s.accumulators.push_back(std::move(acc));
  }
  stats_.buckets = static_cast<int64_t>(s.buckets.size());
}

GradReducer::~GradReducer() = default;

void GradReducer::arm() {
  auto& s = *state_;
  std::lock_guard<std::mutex> lock(s.mu);
  s.pending.assign(s.buckets.size(), 0);
  for (size_t b = 0; b < s.buckets.size(); ++b) s.pending[b] = static_cast<int64_t>(s.buckets[b].size());
  s.flat.assign(s.buckets.size(), torch::Tensor());
  s.work.assign(s.buckets.size(), {});
  s.next = 0;
  s.overlapped = 0;
  s.armed = true;
}

void GradReducer::finish() {
  auto& s = *state_;
  std::unique_lock<std::mutex> lock(s.mu);
  s.armed = false;
  stats_.overlapped = s.overlapped;
  const auto t0 = std::chrono::steady_clock::now();
  stats_.bytes = 0;
  try {
    while (s.next < s.buckets.size()) s.start(s.next++);
    for (size_t b = 0; b < s.buckets.size(); ++b) s.work[b]->wait();
  } catch (const std::exception& e) {
    lock.unlock();
    group_.rethrow_peer_failure("gradient all-reduce", e);
  }
  stats_.wait_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  torch::NoGradGuard ng;
  const double inv_world = 1.0 / divisor_;
  for (size_t b = 0; b < s.buckets.size(); ++b) {
    auto& f = s.flat[b];
    f.mul_(inv_world);
    stats_.bytes += f.numel() * static_cast<int64_t>(f.element_size());
    int64_t off = 0;
    for (size_t i : s.buckets[b]) {
      auto& p = s.params[i];
      const int64_t n = p.numel();
      auto avg = f.narrow(0, off, n).view(p.sizes());
      if (p.grad().defined()) p.mutable_grad().copy_(avg);
      else p.mutable_grad() = avg.clone();
      off += n;
    }
    f = torch::Tensor();
  }
}

void broadcast_from_rank0(ProcessGroup& group, const std::vector<torch::Tensor>& tensors) {
  if (group.size() == 1 || tensors.empty()) return;
  torch::NoGradGuard ng;
  std::vector<torch::Tensor> parts;
  for (const auto& t : tensors) parts.push_back(t.detach().to(torch::kFloat64).reshape({-1}));
  auto flat = torch::cat(parts);
  group.broadcast(flat, 0);
  int64_t off = 0;
  for (auto t : tensors) {
    auto d = t.detach();
    d.copy_(flat.narrow(0, off, d.numel()).view(d.sizes()));
    off += d.numel();
  }
}

}  // namespace ecdlm::dist
