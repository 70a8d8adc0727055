// `ecdlm launch`: starts the ranks of this machine with the torchrun environment, like
// `torchrun --standalone` (one machine) or `torchrun --nnodes M --node-rank R` (several).
#pragma once
#include <string>
#include <vector>

namespace ecdlm::dist {

struct LaunchParams {
  int nproc_per_node = 1;
  int nnodes = 1;
  int node_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 0;        // 0: one machine picks a free port; several machines must name one
  double kill_grace_s = 10.0; // after a rank fails: SIGTERM to the rest, SIGKILL after this
};

// Runs `argv` (an ecdlm subcommand line, e.g. {"train", "--config", ...}) as nproc_per_node
// local ranks of this binary, each with RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
// GROUP_RANK, MASTER_ADDR and MASTER_PORT set. Every line a rank prints is prefixed "[rank R] ".
// SIGINT/SIGTERM are forwarded to the ranks. When a rank fails, the others are stopped, and the
// result is that rank's exit code (128 + signal if killed). UserError on bad parameters.
int launch(const LaunchParams& p, const std::vector<std::string>& argv);

}  // namespace ecdlm::dist
