#include "../test_util.h"

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <vector>

namespace ecdlm::test {
namespace {

// Every directory temp_dir made in this process, removed at exit: ctest runs each test in its own
// process, so that is the end of the test, pass or fail (an assertion failure still exits normally).
// ECDLM_KEEP_TEST_TMP=1 keeps them for a post-mortem.
struct TempDirs {
  std::mutex mu;
  std::vector<std::filesystem::path> dirs;
  static TempDirs& get() {
    static TempDirs* t = new TempDirs;  // never destroyed: the atexit hook may run after statics die
    return *t;
  }
  static void remove_all_at_exit() {
    const char* keep = std::getenv("ECDLM_KEEP_TEST_TMP");
    if (keep != nullptr && std::string(keep) == "1") return;
    auto& t = get();
    std::lock_guard<std::mutex> lock(t.mu);
    for (const auto& d : t.dirs) {
      std::error_code ec;
      std::filesystem::remove_all(d, ec);
    }
    t.dirs.clear();
  }
};

}  // namespace

std::string temp_dir(const std::string& tag) {
  static std::atomic<int> counter{0};
  static const bool hooked = (std::atexit(&TempDirs::remove_all_at_exit), true);
  (void)hooked;
  auto p = std::filesystem::temp_directory_path() /
           ("ecdlm-test-" + tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  auto& t = TempDirs::get();
  std::lock_guard<std::mutex> lock(t.mu);
  t.dirs.push_back(p);
  return p.string();
}

}  // namespace ecdlm::test
