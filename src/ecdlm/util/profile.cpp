#include "ecdlm/util/profile.h"

#include <sys/resource.h>

namespace ecdlm::prof {

double peak_rss_bytes() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_maxrss) * 1024.0;  // Linux reports KiB
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
