#include "ecdlm/util/error.h"

namespace ecdlm {

std::string format_error(const std::string& file, const std::string& field,
                         const std::string& problem, const std::string& fix) {
  std::string s;
  if (!file.empty()) s += file + ": ";
  if (!field.empty()) s += field + ": ";
  s += problem;
  if (!fix.empty()) s += " (fix: " + fix + ")";
  return s;
}

void fail(const std::string& file, const std::string& field, const std::string& problem,
          const std::string& fix) {
  throw UserError(format_error(file, field, problem, fix));
}

}  // namespace ecdlm
