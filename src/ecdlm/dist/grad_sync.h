// Data-parallel gradient averaging: bucketed all-reduce overlapped with backward, the scheme of
// PyTorch's DDP, built on autograd hooks.
//
// Why hooks and not c10d::Reducer: libtorch 1.13 exports the Reducer from libtorch_cpu, but
// Debian's libtorch-dev ships reducer.hpp without the headers it includes
// (torch/csrc/distributed/autograd/context/context.h is not packaged), so it cannot be compiled
// against without re-creating private PyTorch headers. The hooks below use only public autograd
// API (a post hook on each parameter's gradient accumulator) and ProcessGroupGloo's async
// all-reduce.
//
// Parameters are grouped in reverse order (the order backward produces their gradients) into
// buckets of about `bucket_bytes`. When the last gradient of a bucket has been accumulated, the
// bucket is flattened and its all-reduce starts on Gloo's thread while backward continues. Buckets
// start strictly in order, so every rank issues the same sequence of collectives even when a
// parameter gets no gradient on some rank (an expert without tokens): such a bucket, and the ones
// after it, start in finish(), with zeros for the missing gradients.
#pragma once
#include <torch/torch.h>

#include <memory>
#include <vector>

#include "ecdlm/dist/process_group.h"

namespace ecdlm::dist {

class GradReducer {
 public:
  // `params`: the trainable parameters, in the same order on every rank. The group outlives this.
  // `divisor`: the averaged gradient is the sum / divisor (0: the group size; expert parallel
  // divides expert shards reduced over their replicas by the whole world).
  GradReducer(ProcessGroup& group, std::vector<torch::Tensor> params, int64_t bucket_bytes = 8 << 20,
              double divisor = 0.0);
  ~GradReducer();
  // Arms the hooks for the next backward (the last micro-batch of an accumulation: earlier ones
  // only accumulate locally, like DDP's no_sync).
  void arm();
  // After that backward: starts the buckets not started yet, waits for all, and writes the
  // averaged gradients (sum / world size) into .grad. PeerError if a peer failed.
  void finish();

  struct Stats {
    int64_t bytes = 0;           // all-reduced per step (f32 payload)
    double wait_s = 0.0;         // time finish() waited for communication (not overlapped)
    int64_t overlapped = 0;      // buckets started during backward
    int64_t buckets = 0;
  };
  const Stats& last_stats() const { return stats_; }

  struct State;  // per-bucket bookkeeping shared with the hooks

 private:
  ProcessGroup& group_;
  std::shared_ptr<State> state_;
  double divisor_;
  Stats stats_;
};

// Copies rank 0's values of `tensors` (parameters and buffers) to every rank, one collective.
void broadcast_from_rank0(ProcessGroup& group, const std::vector<torch::Tensor>& tensors);

}  // namespace ecdlm::dist
