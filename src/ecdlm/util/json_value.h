// Typed reads of JSON values from the files users edit (config.json, training configs).
// nlohmann's get<T>() converts across types: it truncates 2.5 to 2, wraps 2^64 - 1 to -1 and
// takes true as 1. These accept a value of T's own type only (an integer may be written 32.0) and
// raise UserError naming the file and key otherwise.
#pragma once
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "ecdlm/util/error.h"

namespace ecdlm {

// An integer within int64: a JSON integer, or a float with a whole value up to 2^53.
inline bool json_integer(const nlohmann::json& v, int64_t& out) {
  if (v.is_number_integer()) {
    if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) return false;
    out = v.get<int64_t>();
    return true;
  }
  if (!v.is_number_float()) return false;
  const double d = v.get<double>();
  if (!std::isfinite(d) || d != std::floor(d) || std::fabs(d) > 9007199254740992.0) return false;
  out = static_cast<int64_t>(d);
  return true;
}

// v shortened for a message.
inline std::string json_shown(const nlohmann::json& v) {
  auto s = v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return s.size() > 60 ? s.substr(0, 57) + "..." : s;
}

template <typename T>
void json_value(const nlohmann::json& v, T& out, const std::string& src, const std::string& key) {
  if constexpr (std::is_same_v<T, bool>) {
    if (!v.is_boolean()) fail(src, key, "must be true or false, got " + json_shown(v), "");
    out = v.get<bool>();
  } else if constexpr (std::is_integral_v<T>) {
    int64_t x = 0;
    const bool ok = json_integer(v, x) || (std::is_unsigned_v<T> && v.is_number_unsigned());
    if (!ok || (std::is_unsigned_v<T> && x < 0))
      fail(src, key, std::string("must be ") + (std::is_unsigned_v<T> ? "a non-negative integer" : "an integer") +
                         ", got " + json_shown(v),
           "write a whole number");
    out = v.is_number_unsigned() ? static_cast<T>(v.get<uint64_t>()) : static_cast<T>(x);
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!v.is_number() || !std::isfinite(v.get<double>()))
      fail(src, key, "must be a finite number, got " + json_shown(v), "");
    out = static_cast<T>(v.get<double>());
  } else if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
    if (!v.is_array()) fail(src, key, "must be an array of integers, got " + json_shown(v), "");
    out.clear();
    for (size_t i = 0; i < v.size(); ++i) {
      int64_t x = 0;
      if (!json_integer(v[i], x))
        fail(src, key, "entry " + std::to_string(i) + " must be an integer, got " + json_shown(v[i]), "");
      out.push_back(x);
    }
  } else {
    static_assert(std::is_same_v<T, std::string>, "json_value: bool, integers, floats, strings, int64 lists");
    if (!v.is_string()) fail(src, key, "must be a string, got " + json_shown(v), "");
    out = v.get<std::string>();
  }
}

}  // namespace ecdlm
