// Small string helpers shared across the library.
#pragma once
#include <cstdio>
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

// "1.23 GB" / "45.60 MB": a byte count for the logs.
inline std::string size_str(double bytes) {
  char buf[32];
  if (bytes >= 1e9) std::snprintf(buf, sizeof(buf), "%.2f GB", bytes / 1e9);
  else std::snprintf(buf, sizeof(buf), "%.2f MB", bytes / 1e6);
  return buf;
}

}  // namespace ecdlm
