// Private to dist/*.cpp: the c10d objects behind ProcessGroup. Needs USE_C10D_GLOO and
// USE_DISTRIBUTED (Debian's libtorch was built with them; CMake sets them for dist/ only).
#pragma once
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <atomic>
#include <thread>
#include <vector>

#include "ecdlm/dist/process_group.h"

namespace ecdlm::dist {

struct ProcessGroup::Impl {
  c10::intrusive_ptr<c10d::Store> store;         // collectives' rendezvous and config checks
  c10::intrusive_ptr<c10d::TCPStore> hb_store;   // the heartbeat thread's own connection
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
  std::vector<int> members;                      // global rank of each rank of this group
  c10::intrusive_ptr<c10d::ProcessGroupGloo::Options> options;
  std::thread heartbeat;
  std::atomic<bool> stop{false};
  int64_t check_seq = 0;
  double timeout_s = 300.0;
};

}  // namespace ecdlm::dist
