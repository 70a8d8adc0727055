// The request parser behind /v1/completions and /v1/chat/completions (serve/api.cpp build_job)
// against hostile bodies: thousands of seeded mutations of valid requests (fields dropped, values
// swapped for other JSON types and extreme numbers, unknown fields, truncation, stray bytes,
// deep nesting). Each must give a job that the scheduler can run, or an ApiError with a 4xx
// status and a message; any other exception would escape the HTTP handler as a 500.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <random>
#include <string>
#include <vector>

#include "../json_mutate.h"
#include "test_tokenizer.h"
#include "../test_models.h"
#include "ecdlm/model/moe_dlm.h"
#include "ecdlm/serve/api.h"

namespace ecdlm::serve {
namespace {

using nlohmann::json;

constexpr int64_t kVocab = 48, kContext = 128;

// One piece per id below 40 ('0' + id), text encoded byte by byte onto them: enough for the
// parser, which only counts and checks ids.
std::vector<std::string> digit_pieces() {
  std::vector<std::string> p;
  for (int i = 0; i < 40; ++i) p.emplace_back(1, static_cast<char>('0' + i));
  return p;
}

struct Fixture {
  MoeDlm model{nullptr};
  test::PieceTokenizer tok{digit_pieces(), kVocab, 40};
  ApiDefaults d;
  Fixture() {
    auto c = test::small_tc_config(kVocab);
    c.max_position_embeddings = kContext;
    model = MoeDlm(c);
    d.model_id = "tiny";
    d.params.gen_length = 32;
    d.params.mask_id = kVocab - 1;
    d.params.routing.block_min_experts = 4;  // G within the 8 experts (the CLI's flag sets it)
    d.chat = true;
    d.chat_stop_ids = {kVocab - 2};
    d.max_n = 4;
  }
};

const std::vector<json>& valid_bodies() {
  static const std::vector<json> bodies = {
      {{"model", "tiny"}, {"prompt", "hello there"}, {"max_tokens", 16}},
      {{"model", "tiny"}, {"prompt", "hi"}, {"ecdlm", {{"block_length", 8}, {"moe_routing", "des-s"}}}},
      {{"model", "tiny"},
       {"prompt", json::array({1, 2, 3})},
       {"max_tokens", 32},
       {"temperature", 0.7},
       {"top_p", 0.9},
       {"seed", 5},
       {"n", 2},
       {"stop", json::array({"ab", "c"})},
       {"stream", true},
       {"stream_options", {{"include_usage", true}}},
       {"ecdlm", {{"threshold", 0.9}, {"block_length", 16}, {"steps", 8}, {"moe_routing", "block"},
                  {"block_top_p", 0.6}, {"stream_canvas", true}}}},
      {{"model", "tiny"},
       {"messages", json::array({{{"role", "system"}, {"content", "be brief"}},
                                 {{"role", "user"}, {"content", json::array({{{"type", "text"}, {"text", "hi"}}})}}})},
       {"max_completion_tokens", 8},
       {"user", "u1"}},
  };
  return bodies;
}

std::string mutate(json body, std::mt19937_64& rng) {
  static const std::vector<json> extra = {
      kVocab, kVocab - 1, "block", "token", "llada2", "fast-dllm", "text", "user", "tiny",
      json::array({{{"role", "user"}, {"content", "x"}}}), json::array({{{"type", "image"}}})};
  test::mutate_json(body, rng,
                    {"max_tokens", "n", "seed", "temperature", "top_p", "stop", "stream", "prompt", "messages", "ecdlm",
                     "model", "max_completion_tokens", "stream_options"},
                    {"logprobs", "Model"}, extra);
  std::string s = body.dump();
  switch (rng() % 6) {
    case 0:  // truncated
      s.resize(rng() % (s.size() + 1));
      break;
    case 1:  // a stray byte, invalid UTF-8 included
      s.insert(s.begin() + static_cast<long>(rng() % (s.size() + 1)), static_cast<char>(rng() % 256));
      break;
    default:
      break;
  }
  return s;
}

// A job the scheduler can run: a non-empty prompt of vocabulary ids, one row per choice, and
// every row's output inside the context, in whole blocks.
void expect_runnable(const Job& job, const std::string& body) {
  ASSERT_FALSE(job.prompt.empty()) << body;
  for (auto id : job.prompt) ASSERT_TRUE(id >= 0 && id < kVocab) << body;
  ASSERT_GE(job.params.size(), 1U) << body;
  ASSERT_LE(job.params.size(), 4U) << body;
  for (const auto& p : job.params) {
    ASSERT_GE(p.gen_length, 1) << body;
    ASSERT_GE(p.block_length, 1) << body;
    ASSERT_LE(p.block_length, kContext) << body;
    const int64_t P = static_cast<int64_t>(job.prompt.size());
    ASSERT_LE(P + p.gen_length, kContext / p.block_length * p.block_length) << body;
    ASSERT_TRUE(p.temperature >= 0 && p.temperature <= 2) << body;
    ASSERT_TRUE(p.top_p > 0 && p.top_p <= 1) << body;
    ASSERT_TRUE(p.threshold >= 0 && p.threshold <= 1) << body;
  }
  for (const auto& s : job.stop) ASSERT_FALSE(s.empty()) << body;
}

TEST(ServeApi, ValidBodiesBuildRunnableJobs) {
  Fixture f;
  for (size_t i = 0; i < valid_bodies().size(); ++i) {
    const auto& b = valid_bodies()[i];
    RequestInfo info;
    const bool chat = b.contains("messages");
    auto job = build_job(b.dump(), chat, f.d, f.model, f.tok, info);
    expect_runnable(*job, b.dump());
    EXPECT_EQ(info.chat, chat);
  }
  RequestInfo info;
  const auto job = build_job(valid_bodies()[2].dump(), false, f.d, f.model, f.tok, info);
  EXPECT_EQ(job->params.size(), 2U);
  EXPECT_EQ(job->params[1].seed, 6U);  // seed + choice index
  EXPECT_EQ(job->params[0].block_length, 16);
  EXPECT_TRUE(info.stream && info.include_usage && job->canvas);
  EXPECT_EQ(job->params[0].steps, 8);                     // the request's own steps
  EXPECT_EQ(job->params[0].routing.block_chunk, 16);      // one vote per (request) block
  // A block of its own, no steps given: the server's one step per token and one vote per block
  // follow it; a server chunk set apart from its block stays.
  const auto own = build_job(valid_bodies()[1].dump(), false, f.d, f.model, f.tok, info);
  EXPECT_EQ(own->params[0].block_length, 8);
  EXPECT_EQ(own->params[0].steps, 8);
  EXPECT_EQ(own->params[0].routing.des_chunk, 8);
  Fixture g;
  g.d.params.routing.block_chunk = 8;
  json b = valid_bodies()[0];
  b["ecdlm"] = {{"block_length", 16}, {"moe_routing", "block"}};
  EXPECT_EQ(build_job(b.dump(), false, g.d, g.model, g.tok, info)->params[0].routing.block_chunk, 8);
  b["ecdlm"]["block_length"] = 12;  // 8 does not divide 12
  EXPECT_THROW(build_job(b.dump(), false, g.d, g.model, g.tok, info), ApiError);
}

TEST(ServeApi, HostileBodiesGiveAJobOrA4xx) {
  Fixture f;
  std::mt19937_64 rng(20261206);
  int jobs = 0, refused = 0;
  for (int i = 0; i < 6000; ++i) {
    const auto& base = valid_bodies()[static_cast<size_t>(i) % valid_bodies().size()];
    const std::string body = mutate(base, rng);
    const bool chat = rng() % 4 == 0 ? !base.contains("messages") : base.contains("messages");
    RequestInfo info;
    try {
      auto job = build_job(body, chat, f.d, f.model, f.tok, info);
      expect_runnable(*job, body);
      ++jobs;
    } catch (const ApiError& e) {
      EXPECT_TRUE(e.status == 400 || e.status == 404) << e.status << " for " << body;
      EXPECT_FALSE(std::string(e.what()).empty()) << body;
      ++refused;
    } catch (const std::exception& e) {
      ADD_FAILURE() << "not an ApiError (" << e.what() << ") for body: " << body;
    }
  }
  RecordProperty("jobs", jobs);
  RecordProperty("refused", refused);
  // Both outcomes occur, so the mutations reach past the first checks.
  EXPECT_GT(jobs, 300);
  EXPECT_GT(refused, 3000);
}

TEST(ServeApi, DeepNestingIsRefusedNotACrash) {
  Fixture f;
  for (const int depth : {1000, 100000}) {
    std::string nest(static_cast<size_t>(depth), '[');
    nest += std::string(static_cast<size_t>(depth), ']');
    for (const auto& body : {nest, R"({"model": "tiny", "prompt": )" + nest + "}",
                             R"({"model": "tiny", "prompt": "x", "ecdlm": )" + nest + "}"}) {
      RequestInfo info;
      try {
        build_job(body, false, f.d, f.model, f.tok, info);
        ADD_FAILURE() << "accepted a nested body of depth " << depth;
      } catch (const ApiError& e) {
        EXPECT_EQ(e.status, 400);
      }
    }
  }
}

}  // namespace
}  // namespace ecdlm::serve
