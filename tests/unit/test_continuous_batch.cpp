// Continuous batching (generate/continuous.h): a row's tokens, forwards and per-forward expert
// counts equal threshold_generate's for the same settings, whether it runs alone or joins a batch
// of rows with other prompt lengths, seeds, temperatures and output lengths at a later step. Also:
// cancellation frees the row's KV cache, and the streamed final tokens add up to the result.
// The models run in f64, as in test_threshold_batch.cpp: f32 GEMM results depend on the number of
// rows (BLAS blocking), which flips near-tie decisions of random tiny models; in f64 the check is
// the batching logic, decision for decision. The f32 cases check that the decoders' f32 path (the
// AVX-512 kernels inside kernels::F32TilesScope) is exact alone and in a batch too.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>

#include "../test_models.h"
#include "../test_util.h"
#include "ecdlm/generate/continuous.h"
#include "ecdlm/model/checkpoint.h"
#include "ecdlm/util/error.h"

using namespace ecdlm;

namespace {

struct Case {
  std::string model, routing;
  bool eos;  // a frequent output token becomes EOS (rows stop early), early stop on
  bool f32 = false;  // keep the model in f32 (the decoders' AVX-512 kernels: row results independent of the batch)
};
void PrintTo(const Case& c, std::ostream* os) {
  *os << c.model << " " << c.routing << " eos=" << c.eos << (c.f32 ? " f32" : "");
}

MoeDlm make_model(const std::string& name, bool f32) {
  if (name == "ec" || name == "tc-capacity") {
    torch::manual_seed(5);
    auto cfg = test::small_tc_config(300);
    if (name == "ec") {
      cfg.router_type = RouterType::kExpertChoice;
      cfg.moe_capacity_schedule = "linear-reverse";  // capacity from each row's own mask ratio
      cfg.moe_capacity_k_min = 1;
      cfg.moe_capacity_k_max = 4;
    } else {
      cfg.moe_capacity_factor = 1.0;  // a pooled capacity would make drops depend on the batch
    }
    cfg.validate("test");
    MoeDlm m(cfg);
    m->to(torch::kFloat64);
    return m;
  }
  auto m = load_model(test::golden_dir(name));
  if (!f32) m->to(torch::kFloat64);
  return m;
}

std::vector<std::vector<int64_t>> prompts() {
  std::vector<std::vector<int64_t>> out;
  for (int64_t len : {3, 0, 17, 20, 33, 5}) {
    std::vector<int64_t> p;
    for (int64_t i = 0; i < len; ++i) p.push_back((len * 37 + i * 11) % 290 + 1);
    out.push_back(p);
  }
  return out;
}

// Row i's own settings: seeds, temperatures, output lengths and rules differ across rows.
gen::ThresholdParams row_params(const Case& c, size_t i) {
  gen::ThresholdParams p;
  p.gen_length = std::vector<int64_t>{40, 25, 48, 16, 40, 33}[i];
  p.block_length = 16;
  p.steps = 8;
  p.threshold = 0.9;
  p.mask_id = 299;
  p.eos_id = -2;
  p.seed = 21 + 3 * i;
  p.temperature = i % 2 ? 1.0 : 0.0;
  p.top_p = i == 3 ? 0.9 : 1.0;
  if (i == 5) p.rule = gen::ThresholdRule::kFastThreshold;
  p.routing.policy = moe::parse_routing_policy(c.routing);
  p.routing.block_chunk = 16;
  p.routing.block_min_experts = 12;
  p.routing.des_chunk = 16;
  p.routing.topk_cap = 2;
  return p;
}

bool model_available(const std::string& name) { return name == "ec" || name == "tc-capacity" || test::has_golden(name); }

}  // namespace

class ContinuousBatch : public ::testing::TestWithParam<Case> {};

TEST_P(ContinuousBatch, RowsEqualThresholdGenerateAloneAndInABatch) {
  const auto& c = GetParam();
  if (!model_available(c.model)) GTEST_SKIP();
  auto model = make_model(c.model, c.f32);
  const auto ps = prompts();
  std::vector<gen::ThresholdParams> params;
  for (size_t i = 0; i < ps.size(); ++i) params.push_back(row_params(c, i));
  if (c.eos) {
    std::map<int64_t, int> freq;
    for (size_t i = 0; i < ps.size(); ++i)
      for (auto t : gen::threshold_generate(model, ps[i], params[i]).tokens) ++freq[t];
    int best = 0;
    int64_t eos = -2;
    for (const auto& [t, n] : freq)
      if (n > best) best = n, eos = t;
    for (auto& p : params) p.eos_id = eos, p.eos_early_stop = true;
  }
  std::vector<gen::ThresholdResult> ref;
  for (size_t i = 0; i < ps.size(); ++i) ref.push_back(gen::threshold_generate(model, ps[i], params[i]));

  gen::BatcherParams bp;
  bp.block_length = 16;
  bp.routing = params[0].routing;
  auto check = [&](const gen::ThresholdResult& got, size_t i, const std::string& where) {
    EXPECT_EQ(got.tokens, ref[i].tokens) << where << " row " << i;
    EXPECT_EQ(got.forwards, ref[i].forwards) << where << " row " << i;
    EXPECT_EQ(got.eos_stopped, ref[i].eos_stopped) << where << " row " << i;
    EXPECT_FALSE(got.cancelled);
    ASSERT_EQ(got.per_forward.size(), ref[i].per_forward.size()) << where << " row " << i;
    for (size_t f = 0; f < ref[i].per_forward.size(); ++f) {
      EXPECT_EQ(got.per_forward[f].block, ref[i].per_forward[f].block);
      EXPECT_EQ(got.per_forward[f].committed, ref[i].per_forward[f].committed);
      EXPECT_NEAR(got.per_forward[f].unique_experts_per_layer, ref[i].per_forward[f].unique_experts_per_layer, 1e-9)
          << where << " row " << i << " forward " << f;
    }
  };
  // Alone.
  for (size_t i = 0; i < ps.size(); ++i) {
    gen::ContinuousBatcher cb(model, bp);
    cb.add(ps[i], params[i]);
    std::vector<int64_t> streamed;
    bool done = false;
    while (cb.rows() > 0) {
      for (auto& ev : cb.step()) {
        streamed.insert(streamed.end(), ev.final_tokens.begin(), ev.final_tokens.end());
        if (ev.finished) check(ev.result, i, "alone"), done = true;
      }
    }
    EXPECT_TRUE(done);
    EXPECT_EQ(streamed, ref[i].tokens) << "streamed blocks, row " << i;
  }
  // In a batch: two rows start, one more joins after each step.
  gen::ContinuousBatcher cb(model, bp);
  std::map<int64_t, size_t> row_of;
  std::map<int64_t, std::vector<int64_t>> streamed;
  row_of[cb.add(ps[0], params[0])] = 0;
  row_of[cb.add(ps[1], params[1])] = 1;
  size_t next = 2, finished = 0, max_rows = 0;
  while (cb.rows() > 0 || next < ps.size()) {
    gen::StepStats st;
    for (auto& ev : cb.step(&st)) {
      auto& s = streamed[ev.id];
      s.insert(s.end(), ev.final_tokens.begin(), ev.final_tokens.end());
      if (ev.finished) {
        check(ev.result, row_of[ev.id], "batch");
        EXPECT_EQ(s, ref[row_of[ev.id]].tokens);
        ++finished;
      }
    }
    max_rows = std::max(max_rows, static_cast<size_t>(st.rows));
    if (next < ps.size()) row_of[cb.add(ps[next], params[next])] = next, ++next;
  }
  EXPECT_EQ(finished, ps.size());
  EXPECT_GE(max_rows, 4u) << "the batch should hold several rows at once";
  EXPECT_EQ(cb.kv_bytes(), 0);
}

INSTANTIATE_TEST_SUITE_P(Rows, ContinuousBatch,
                         ::testing::Values(Case{"tiny", "token", false}, Case{"tiny", "token", true},
                                           Case{"tiny-dmoe", "block", false}, Case{"tiny-dmoe", "block", true},
                                           Case{"tiny-dmoe", "des-v", false}, Case{"ec", "token", false},
                                           Case{"tc-capacity", "token", false},
                                           // f32 golden models: every op of the decoders' f32 path
                                           // (AVX-512 dot tiles, fused attention, greedy picks, and
                                           // torch's row-wise ops) rounds a row alike alone and in a batch.
                                           Case{"tiny", "token", false, true}, Case{"tiny", "token", true, true},
                                           Case{"tiny-dmoe", "block", false, true}),
                         [](const auto& info) {
                           std::string n = info.param.model + "_" + info.param.routing + (info.param.eos ? "_eos" : "") +
                                                           (info.param.f32 ? "_f32" : "");
                           for (auto& ch : n)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });

TEST(ContinuousBatch, CancelFreesTheRowAtTheNextStep) {
  if (!test::has_golden("tiny")) GTEST_SKIP();
  auto model = load_model(test::golden_dir("tiny"));
  auto p = row_params(Case{"tiny", "token", false}, 0);
  p.gen_length = 64;
  gen::BatcherParams bp;
  bp.block_length = 16;
  gen::ContinuousBatcher cb(model, bp);
  const auto a = cb.add(prompts()[2], p);
  cb.add(prompts()[3], p);
  cb.step();
  cb.step();
  const int64_t both = cb.kv_bytes();
  EXPECT_GT(both, 0);
  cb.cancel(a);
  bool seen = false;
  for (auto& ev : cb.step())
    if (ev.id == a) {
      EXPECT_TRUE(ev.finished);
      EXPECT_TRUE(ev.result.cancelled);
      seen = true;
    }
  EXPECT_TRUE(seen);
  EXPECT_EQ(cb.rows(), 1);
  EXPECT_LT(cb.kv_bytes(), both);
}

TEST(ContinuousBatch, RefusesRowsTheBatchCannotHold) {
  if (!test::has_golden("tiny")) GTEST_SKIP();
  auto model = load_model(test::golden_dir("tiny"));
  gen::BatcherParams bp;
  bp.block_length = 16;
  gen::ContinuousBatcher cb(model, bp);
  auto p = row_params(Case{"tiny", "token", false}, 0);
  auto other = p;
  other.block_length = 32;
  EXPECT_FALSE(cb.compatible(other));
  EXPECT_THROW(cb.add({1, 2}, other), UserError);
  other = p;
  other.kv_cache = false;
  EXPECT_THROW(cb.add({1, 2}, other), UserError);
  EXPECT_THROW(cb.add({1, 400}, p), UserError);
  other = p;
  other.gen_length = 100000;
  EXPECT_THROW(cb.add({1, 2}, other), UserError);
  EXPECT_EQ(cb.rows(), 0);
}
