// Small string helpers shared across the library.
#pragma once
#include <string>
#include <vector>

namespace ecdlm {

inline bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// "a,b,c": the items of a comma list flag, for the settings logged at start.
inline std::string join(const std::vector<std::string>& v, const std::string& sep = ",") {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : sep) + x;
  return s;
}

}  // namespace ecdlm
