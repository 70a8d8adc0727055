#include "ecdlm/util/profile.h"

#include <sys/resource.h>
#include <unistd.h>

#include <fstream>
#include <string>

namespace ecdlm::prof {

double peak_rss_bytes() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_maxrss) * 1024.0;  // Linux reports KiB
}
double rss_bytes() {
  std::ifstream f("/proc/self/statm");
  int64_t size = 0, resident = 0;
  if (!(f >> size >> resident)) return -1.0;
  return static_cast<double>(resident) * static_cast<double>(::sysconf(_SC_PAGESIZE));
}

int64_t available_memory_bytes() {
  std::ifstream f("/proc/meminfo");
  std::string key, unit;
  int64_t kb = 0;
  while (f >> key >> kb >> unit)
    if (key == "MemAvailable:") return kb * 1024;
  return -1;
}

namespace {
bool g_enabled = false;
std::array<double, kParts> g_ms{};
}  // namespace

const char* part_name(Part p) {
  static const char* names[] = {"attention", "router", "experts", "shared", "dense", "head"};
  return names[p];
}
void set_enabled(bool on) { g_enabled = on; }
bool enabled() { return g_enabled; }
void reset() { g_ms.fill(0.0); }
std::array<double, kParts> totals_ms() { return g_ms; }

Scope::~Scope() {
  if (on_) g_ms[part_] += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0_).count();
}

}  // namespace ecdlm::prof
