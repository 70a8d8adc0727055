// Wall-clock split of model forwards into parts (attention, router, routed experts, shared
// expert, dense MLP layers, LM head), for `bench generate` and per-forward stats. Off by default: a disabled Scope costs one
// branch. CPU libtorch ops are synchronous, so host timers measure the work itself.
#pragma once
#include <array>
#include <chrono>
#include <cstdint>

namespace ecdlm::prof {

enum Part : int { kAttention = 0, kRouter = 1, kExperts = 2, kShared = 3, kDense = 4, kHead = 5, kParts = 6 };
const char* part_name(Part p);

// Peak resident set size of this process so far (getrusage), in bytes.
double peak_rss_bytes();
// Resident set size now (/proc/self/statm), in bytes; -1 where it cannot be read.
double rss_bytes();
// MemAvailable from /proc/meminfo, in bytes; -1 where it cannot be read.
int64_t available_memory_bytes();

void set_enabled(bool on);
bool enabled();
void reset();
std::array<double, kParts> totals_ms();  // since the last reset()

class Scope {
 public:
  explicit Scope(Part p) : part_(p), on_(enabled()) {
    if (on_) t0_ = std::chrono::steady_clock::now();
  }
  ~Scope();
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  Part part_;
  bool on_;
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace ecdlm::prof
