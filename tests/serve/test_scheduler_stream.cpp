// The scheduler's streamed text (serve/scheduler.cpp) on a tiny random model whose tokenizer has
// multi-byte characters split across tokens (decoded lossily, as Hugging Face does: an unfinished
// character is U+FFFD until its last byte arrives) and requests with random stop strings: for every
// choice, the text updates joined are exactly its final text, no stop string appears in it, and it
// is the decoded output cut at the first stop string (finish "stop") or the whole output ("length").
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "../test_models.h"
#include "ecdlm/model/moe_dlm.h"
#include "ecdlm/serve/api.h"
#include "ecdlm/serve/scheduler.h"
#include "ecdlm/text/unicode.h"
#include "test_tokenizer.h"

namespace ecdlm::serve {
namespace {

using nlohmann::json;

constexpr int64_t kVocab = 48;

// Pieces for ids 0..39: a three-letter alphabet (so that stop strings occur, and often across a
// block's end), and "é" and "中" split over two ids each: a block that ends on the first id sends
// U+FFFD for now, which the next block's first id may turn into the character.
const std::vector<std::string>& pieces() {
  static const std::vector<std::string> p = [] {
    std::vector<std::string> v = {"a", "b", "c", "a", "b", "c", "ab", "bc", " ", "ca"};
    for (int i = 0; i < 10; ++i) v.push_back("\xC3");          // é = C3 A9
    for (int i = 0; i < 10; ++i) v.push_back("\xA9");
    for (int i = 0; i < 5; ++i) v.push_back("\xE4\xB8");      // 中 = E4 B8 AD
    for (int i = 0; i < 5; ++i) v.push_back("\xAD");
    return v;
  }();
  return p;
}

TEST(ServeScheduler, StreamedTextIsTheAnswerCutAtTheFirstStopString) {
  torch::manual_seed(3);
  auto cfg = test::small_tc_config(kVocab);
  cfg.max_position_embeddings = 512;
  MoeDlm model(cfg);
  model->eval();
  test::PieceTokenizer tok(pieces(), kVocab, 10);
  ApiDefaults d;
  d.model_id = "tiny";
  d.params.gen_length = 96;
  d.params.block_length = 16;
  d.params.steps = 16;
  d.params.mask_id = kVocab - 1;
  d.max_n = 2;

  std::mt19937_64 rng(5);
  // A stop string: three or four letters, or one with "é".
  const auto stop_string = [&] {
    std::string s;
    for (size_t k = 0, n = 3 + rng() % 2; k < n; ++k) s += static_cast<char>('a' + rng() % 3);
    if (rng() % 4 == 0) s.insert(rng() % s.size(), "\xC3\xA9");
    return s;
  };
  std::vector<std::shared_ptr<Job>> jobs;
  {
    Scheduler sched(model, tok, SchedulerParams{8, 256});
    for (int i = 0; i < 64; ++i) {
      json stop = json::array();
      for (size_t k = 0, n = rng() % 3; k < n; ++k) stop.push_back(stop_string());
      const json body = {{"model", "tiny"},      {"prompt", "hello"}, {"max_tokens", 96}, {"temperature", 1.0},
                         {"seed", i},            {"n", 1 + i % 2},    {"stop", stop},     {"stream", true},
                         {"ecdlm", {{"ignore_eos", true}, {"threshold", 0.5}}}};
      RequestInfo info;
      auto job = build_job(body.dump(), false, d, model, tok, info);
      job->t_submit = Clock::now();
      ASSERT_EQ(sched.submit(job), Scheduler::Admit::kOk);
      jobs.push_back(job);
    }
    for (auto& job : jobs) {
      std::unique_lock<std::mutex> lk(job->mu);
      ASSERT_TRUE(job->cv.wait_for(lk, std::chrono::seconds(120), [&] { return job->done(); }));
    }
    sched.shutdown(5);
  }
  int stopped = 0, whole = 0;
  for (size_t j = 0; j < jobs.size(); ++j) {
    const auto& job = *jobs[j];
    ASSERT_FALSE(job.failed) << job.error;
    for (size_t c = 0; c < job.choices.size(); ++c) {
      const auto& ch = job.choices[c];
      std::string streamed;
      int finishes = 0;
      for (const auto& u : job.updates) {
        if (u.choice != static_cast<int>(c)) continue;
        if (u.kind == Update::kText) streamed += u.text;
        if (u.kind == Update::kFinish) ++finishes;
      }
      const std::string where = "job " + std::to_string(j) + " choice " + std::to_string(c);
      EXPECT_EQ(finishes, 1) << where;
      EXPECT_EQ(streamed, ch.text) << where;
      EXPECT_TRUE(text::uni::is_valid_utf8(ch.text)) << where;
      const std::string full = tok.decode(ch.body);
      size_t first = std::string::npos;
      for (const auto& s : job.stop) {
        EXPECT_EQ(ch.text.find(s), std::string::npos) << where << ": stop '" << s << "' in '" << ch.text << "'";
        first = std::min(first, full.find(s));
      }
      if (first != std::string::npos) {
        EXPECT_EQ(ch.finish_reason, "stop") << where;
        EXPECT_EQ(ch.text, full.substr(0, first)) << where;
        ++stopped;
      } else {
        EXPECT_EQ(ch.finish_reason, "length") << where;
        EXPECT_EQ(ch.text, full) << where;
        ++whole;
      }
    }
  }
  RecordProperty("stopped", stopped);
  RecordProperty("whole", whole);
  EXPECT_GT(stopped, 5);  // both endings occur
  EXPECT_GT(whole, 5);
}

}  // namespace
}  // namespace ecdlm::serve
