// temp_dir's directories are removed when the test process exits, pass or fail
// (tests/e2e/test_tmp_hygiene.sh runs these with a private TMPDIR and checks it is left empty).
#include <gtest/gtest.h>

#include <fstream>

#include "../test_util.h"

namespace {

TEST(TestTempDirs, MadeFreshAndWritable) {
  const auto a = ecdlm::test::temp_dir("hygiene"), b = ecdlm::test::temp_dir("hygiene");
  EXPECT_NE(a, b);
  std::ofstream(a + "/f.txt") << "x";
  EXPECT_TRUE(std::filesystem::exists(a + "/f.txt"));
  EXPECT_TRUE(std::filesystem::is_empty(b));
}

// Disabled: it fails on purpose. The hygiene e2e runs it to see a failing test's directory go too.
TEST(TestTempDirs, DISABLED_FailsAfterMakingADir) {
  const auto d = ecdlm::test::temp_dir("hygiene-fail");
  std::ofstream(d + "/left.txt") << "x";
  FAIL() << "deliberate failure (tests/e2e/test_tmp_hygiene.sh)";
}

}  // namespace
