// Shared helpers for the test suite.
#pragma once
#include <filesystem>
#include <string>

namespace ecdlm::test {

inline std::string shared_dir() { return ECDLM_SHARED_DIR; }
inline std::string golden_dir(const std::string& name) { return shared_dir() + "/golden/" + name; }
inline bool has_golden(const std::string& name) {
  return std::filesystem::exists(golden_dir(name) + "/model.safetensors");
}
// A fresh, empty temporary directory unique to this test.
std::string temp_dir(const std::string& tag);

}  // namespace ecdlm::test
