#include "ecdlm/util/log.h"

#include <cstdio>
#include <mutex>

namespace ecdlm {
namespace {
LogLevel g_level = LogLevel::kInfo;
std::mutex g_mu;
}  // namespace

void set_log_level(LogLevel level) { g_level = level; }
LogLevel log_level() { return g_level; }

void log_line(LogLevel level, const std::string& msg) {
  static const char* tags[] = {"debug", "info", "warn", "error", ""};
  std::lock_guard<std::mutex> lock(g_mu);
  std::fprintf(stderr, "[ecdlm %s] %s\n", tags[static_cast<int>(level)], msg.c_str());
  std::fflush(stderr);
}

}  // namespace ecdlm
