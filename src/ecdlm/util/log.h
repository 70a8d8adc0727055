// Minimal leveled logging to stderr; stdout is kept for results and --json.
#pragma once
#include <sstream>
#include <string>

namespace ecdlm {

enum class LogLevel : int { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3, kQuiet = 4 };

void set_log_level(LogLevel level);
LogLevel log_level();
void log_line(LogLevel level, const std::string& msg);

#define ECDLM_LOG(level, expr)                                   \
  do {                                                           \
    if (static_cast<int>(level) >= static_cast<int>(::ecdlm::log_level())) { \
      std::ostringstream ecdlm_log_os_;                          \
      ecdlm_log_os_ << expr;                                     \
      ::ecdlm::log_line(level, ecdlm_log_os_.str());             \
    }                                                            \
  } while (0)
#define LOG_INFO(expr) ECDLM_LOG(::ecdlm::LogLevel::kInfo, expr)
#define LOG_WARN(expr) ECDLM_LOG(::ecdlm::LogLevel::kWarn, expr)
#define LOG_DEBUG(expr) ECDLM_LOG(::ecdlm::LogLevel::kDebug, expr)

}  // namespace ecdlm
