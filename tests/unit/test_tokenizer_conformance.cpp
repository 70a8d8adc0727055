// Conformance against the Hugging Face Rust `tokenizers` library: compares every tokenizer in the
// oracle's output directory (tests/tokenizer/oracle.js gen) with ecdlm, in one process. Run by
// e2e.tokenizer_conformance, which generates the expectations and sets ECDLM_TOK_CONFORMANCE_DIR;
// skipped when that variable is unset.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "ecdlm/text/tokenizer.h"

namespace ecdlm {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

std::vector<json> read_jsonl(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::vector<json> out;
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) out.push_back(json::parse(line));
  return out;
}

TEST(TokenizerConformance, MatchesHfOracle) {
  const char* root = std::getenv("ECDLM_TOK_CONFORMANCE_DIR");
  if (!root) GTEST_SKIP() << "needs the oracle's output: run ctest -R e2e.tokenizer_conformance";
  std::ifstream names(fs::path(root) / "names.txt");
  std::string name;
  int tokenizers = 0;
  while (std::getline(names, name)) {
    if (name.empty()) continue;
    const fs::path dir = fs::path(root) / name;
    const auto tok = text::load_tokenizer(fs::exists(dir / "tokenizer.json") ? (dir / "tokenizer.json").string() : dir.string());
    const auto input = read_jsonl(dir / "input.jsonl");
    const auto special = read_jsonl(dir / "special.jsonl");
    const auto plain = read_jsonl(dir / "plain.jsonl");
    const auto decoded = read_jsonl(dir / "decoded.jsonl");
    ASSERT_EQ(input.size(), special.size());
    ASSERT_EQ(input.size(), plain.size());
    ASSERT_EQ(input.size(), decoded.size());
    int bad = 0;
    for (size_t i = 0; i < input.size(); ++i) {
      const std::string t = input[i]["text"].get<std::string>();
      const auto want1 = special[i]["ids"].get<std::vector<int32_t>>();
      const auto want0 = plain[i]["ids"].get<std::vector<int32_t>>();
      const auto got1 = tok->encode(t, true), got0 = tok->encode(t, false);
      const std::string want_text = decoded[i]["text"].get<std::string>(), got_text = tok->decode(want1);
      if (got1 != want1 || got0 != want0 || got_text != want_text) {
        if (++bad <= 5)
          ADD_FAILURE() << name << " line " << i + 1 << " text " << json(t).dump().substr(0, 200)
                        << "\n  want " << json(want1).dump().substr(0, 300) << "\n  got  " << json(got1).dump().substr(0, 300)
                        << "\n  decode want " << json(want_text).dump().substr(0, 200) << " got "
                        << json(got_text).dump().substr(0, 200);
      }
    }
    // Ids without a token (past the vocabulary): left out of the decoded text, as HF does.
    for (const auto& u : read_jsonl(dir / "unknown.jsonl")) {
      const auto ids = u["ids"].get<std::vector<int32_t>>();
      EXPECT_EQ(tok->decode(ids), u["text"].get<std::string>()) << name << " ids " << json(ids).dump().substr(0, 200);
    }
    EXPECT_EQ(bad, 0) << name;
    std::printf("%-14s %zu/%zu texts exact (ids with and without special tokens, decoded text)\n", name.c_str(),
                input.size() - static_cast<size_t>(bad), input.size());
    ++tokenizers;
  }
  EXPECT_GE(tokenizers, 5);
}

}  // namespace
}  // namespace ecdlm
