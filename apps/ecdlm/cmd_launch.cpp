// ecdlm launch: start the ranks of a distributed run on this machine (like torchrun).
#include "commands.h"
#include "ecdlm/dist/launcher.h"

namespace ecdlm::cli {

void register_launch(CLI::App& app) {
  auto p = std::make_shared<dist::LaunchParams>();
  auto cmd = std::make_shared<std::vector<std::string>>();
  auto* sub = app.add_subcommand(
      "launch", "Start N ranks of an ecdlm command with the torchrun environment: "
                "ecdlm launch --nproc-per-node 2 -- train --config ...");
  sub->add_option("--nproc-per-node", p->nproc_per_node, "Ranks on this machine")->required()->check(CLI::PositiveNumber);
  sub->add_option("--nnodes", p->nnodes, "Machines in the run (default 1)")->check(CLI::PositiveNumber);
  sub->add_option("--node-rank", p->node_rank, "This machine's index in [0, nnodes)")->check(CLI::NonNegativeNumber);
  sub->add_option("--master-addr", p->master_addr, "Address of node 0 (default 127.0.0.1)");
  sub->add_option("--master-port", p->master_port, "Port on node 0 (default: a free port, one machine only)");
  sub->add_option("command", *cmd, "The ecdlm command to run, after --")->required();
  set_runner(sub, [p, cmd] { return dist::launch(*p, *cmd); });
}

}  // namespace ecdlm::cli
