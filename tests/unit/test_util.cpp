#include "../test_util.h"

#include <unistd.h>

#include <atomic>

namespace ecdlm::test {
std::string temp_dir(const std::string& tag) {
  static std::atomic<int> counter{0};
  auto p = std::filesystem::temp_directory_path() /
           ("ecdlm-test-" + tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p.string();
}
}  // namespace ecdlm::test
