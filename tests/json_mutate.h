// Seeded mutations of JSON documents for the hostile-input tests (request bodies, config.json):
// values swapped for other JSON types and extreme numbers, members dropped or added, arrays grown.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <iterator>
#include <random>
#include <string>
#include <vector>

namespace ecdlm::test {

// A value of any JSON type: extreme and non-integral numbers, empty and long strings, containers.
// `extra` joins the pool (values that mean something to the document under test).
inline nlohmann::json odd_json_value(std::mt19937_64& rng, const std::vector<nlohmann::json>& extra = {}) {
  using nlohmann::json;
  static const std::vector<json> pool = {
      nullptr, true, false, 0, -1, 1, 2, 3, 7, 8, 31, 32, 33, 127, 128, 129, 4096,
      INT64_MAX, INT64_MIN, UINT64_MAX, 0.5, -0.5, 2.5, 32.0, 1e308, -1e308, 1e-320, "", "x",
      std::string(5000, 'z'), json::array(), json::object(), json::array({1, 2}), json::array({"a"}),
      json::array({json::array({1})}), json::object({{"a", 1}})};
  const size_t n = pool.size() + extra.size();
  const size_t i = static_cast<size_t>(rng() % n);
  return i < pool.size() ? pool[i] : extra[i - pool.size()];
}

// A random node of j (the root included): descends while it can, stopping a third of the time.
inline nlohmann::json* random_json_node(nlohmann::json& j, std::mt19937_64& rng) {
  nlohmann::json* node = &j;
  while ((node->is_object() || node->is_array()) && !node->empty() && rng() % 3 != 0) {
    auto it = node->begin();
    std::advance(it, static_cast<long>(rng() % node->size()));
    node = &*it;
  }
  return node;
}

// One to three edits of doc: drop a member or element, swap a value, add a member named from
// `new_keys`, grow an array, or set one of `keys` at the top level.
inline void mutate_json(nlohmann::json& doc, std::mt19937_64& rng, const std::vector<std::string>& keys,
                        const std::vector<std::string>& new_keys, const std::vector<nlohmann::json>& extra = {}) {
  const int edits = 1 + static_cast<int>(rng() % 3);
  for (int e = 0; e < edits; ++e) {
    nlohmann::json* node = random_json_node(doc, rng);
    switch (rng() % 5) {
      case 0:
        if (node->is_object() && !node->empty()) {
          auto it = node->begin();
          std::advance(it, static_cast<long>(rng() % node->size()));
          node->erase(it.key());
        } else if (node->is_array() && !node->empty()) {
          node->erase(static_cast<size_t>(rng() % node->size()));
        }
        break;
      case 1:
        *node = odd_json_value(rng, extra);
        break;
      case 2:
        if (node->is_object() && !new_keys.empty()) (*node)[new_keys[rng() % new_keys.size()]] = odd_json_value(rng, extra);
        break;
      case 3:
        if (node->is_array()) node->push_back(odd_json_value(rng, extra));
        break;
      default:
        if (doc.is_object() && !keys.empty()) doc[keys[rng() % keys.size()]] = odd_json_value(rng, extra);
    }
  }
}

}  // namespace ecdlm::test
