// The process group of a distributed run: rank and world from the torchrun environment
// (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), rendezvous through
// c10d's TCPStore (hosted by rank 0), collectives through c10d's ProcessGroupGloo. c10d stays
// inside dist/*.cpp: this header only needs libtorch's tensor API.
#pragma once
#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

namespace ecdlm::dist {

struct DistEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  bool distributed() const { return world_size > 1; }
  // From the environment; none of the variables set: a single process (world 1). Malformed or
  // inconsistent values -> UserError naming the variable.
  static DistEnv from_environment();
};

// Thrown when a collective fails (a peer died or stalled past the timeout). what() names this
// rank and, when it can be told, the dead one. The CLI reports it and exits non-zero.
class PeerError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class ProcessGroup {
 public:
  // Joins the group: rank 0 binds MASTER_PORT (in use -> UserError) and hosts the store, every
  // rank connects within `timeout_s`, which is also the collectives' timeout. Starts a heartbeat
  // thread so that a failure can name the rank that stopped.
  static std::shared_ptr<ProcessGroup> join(const DistEnv& env, double timeout_s);
  ~ProcessGroup();

  // A sub-group of this group's ranks `ranks` (ascending), e.g. the expert-parallel ranks of one
  // data-parallel index. Only its members call it (each with the same `name`, unique per
  // sub-group): it rendezvous through the parent's store under the prefix `name`. The sub-group's
  // rank() is this rank's index in `ranks`; failures name global ranks.
  std::shared_ptr<ProcessGroup> subgroup(const std::string& name, const std::vector<int>& ranks);

  int rank() const { return env_.rank; }
  int size() const { return env_.world_size; }
  const DistEnv& env() const { return env_; }

  // In-place sums over all ranks (one bucketed collective per call). PeerError on failure.
  void all_reduce_sum(std::vector<torch::Tensor>& tensors);
  void all_reduce_sum(torch::Tensor& t);
  void broadcast(torch::Tensor& t, int root);
  // Every rank's `t` (same shape on all): [size(), *t.shape], row r from rank r. PeerError on failure.
  torch::Tensor all_gather(const torch::Tensor& t);
  void barrier();
  // Every rank passes its own `value` (a hash or a short string) of `what`; if any differ, every
  // rank throws UserError "`what` differs across ranks: rank 0 has X, rank R has Y (fix: FIX)".
  void check_same(const std::string& what, const std::string& value, const std::string& fix);

  // For the c10d reducer and the expert exchange (dist/*.cpp only).
  struct Impl;
  Impl& impl() { return *impl_; }
  // Wraps a failed collective into a PeerError naming the rank(s) whose heartbeat stopped.
  [[noreturn]] void rethrow_peer_failure(const std::string& op, const std::exception& e);

 private:
  ProcessGroup() = default;
  DistEnv env_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ecdlm::dist
