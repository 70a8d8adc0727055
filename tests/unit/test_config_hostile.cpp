// config.json and a training config's "train" section against hostile edits: seeded mutations of the three golden models' configs (LLaDA2,
// dMoE, LLaDA-MoE) must parse into a config that validates or raise UserError naming the file; no
// other exception, no value silently truncated or wrapped (2.5 layers, 2^64 - 1 heads, true as 1).
#include <gtest/gtest.h>

#include <fstream>
#include <random>

#include "../json_mutate.h"
#include "../test_util.h"
#include "ecdlm/model/config.h"
#include "ecdlm/train/experiment.h"
#include "ecdlm/train/train_params.h"
#include "ecdlm/util/error.h"

namespace ecdlm {
namespace {

using nlohmann::json;

json golden_config(const std::string& name) {
  std::ifstream f(std::string(ECDLM_SHARED_DIR) + "/golden/" + name + "/config.json");
  EXPECT_TRUE(f.good()) << name;
  return json::parse(f);
}

// Counts how the reads of hostile documents end: accepted, or a UserError naming `file`; any
// other exception fails the test. Both outcomes must be common, so the edits reach past the
// first checks.
struct Outcomes {
  int accepted = 0, refused = 0;
  template <typename Read>
  void run(const Read& read, const std::string& file, const json& doc) {
    try {
      read();
      ++accepted;
    } catch (const UserError& e) {
      EXPECT_NE(std::string(e.what()).find(file), std::string::npos) << e.what();
      ++refused;
    } catch (const std::exception& e) {
      ADD_FAILURE() << "not a UserError (" << e.what() << ") for " << doc.dump();
    }
  }
  void expect_both(int min_accepted, int min_refused) const {
    ::testing::Test::RecordProperty("accepted", accepted);
    ::testing::Test::RecordProperty("refused", refused);
    EXPECT_GT(accepted, min_accepted);
    EXPECT_GT(refused, min_refused);
  }
};

TEST(ConfigHostile, MutationsParseOrRaiseUserError) {
  std::mt19937_64 rng(20261206);
  std::vector<json> bases;
  std::vector<std::string> keys;
  for (const char* name : {"tiny", "tiny-dmoe", "tiny-lladamoe"}) {
    bases.push_back(golden_config(name));
    for (const auto& [k, v] : bases.back().items()) keys.push_back(k);
  }
  Outcomes out;
  for (int i = 0; i < 6000; ++i) {
    json c = bases[static_cast<size_t>(i) % bases.size()];
    test::mutate_json(c, rng, keys, {"moe_layer_freq", "moe_router_type", "mode", "core_threshold", "head_dim"},
                      {"llada", "llada2_moe", "expert_choice", "aggregate", json::array({0, 1, 1}), 64, 16});
    out.run(
        [&] {
          const auto m = ModelConfig::from_json(c, "config.json");
          EXPECT_GT(m.vocab_size, 0) << c.dump();
          EXPECT_GT(m.num_experts, 0) << c.dump();
          EXPECT_LE(m.num_experts_per_tok, m.num_experts) << c.dump();
        },
        "config.json", c);
  }
  out.expect_both(300, 1000);
}

TEST(ConfigHostile, NumbersKeepTheirType) {
  const json base = golden_config("tiny-dmoe");
  const auto with = [&](const char* key, const json& v) {
    json c = base;
    c[key] = v;
    return c;
  };
  EXPECT_EQ(ModelConfig::from_json(with("num_hidden_layers", 2.0), "config.json").num_hidden_layers, 2);  // 2.0 is 2
  for (const json& bad : {json(2.5), json(true), json(UINT64_MAX), json(1e30), json("2")})
    EXPECT_THROW(ModelConfig::from_json(with("num_hidden_layers", bad), "config.json"), UserError) << bad.dump();
  EXPECT_THROW(ModelConfig::from_json(with("rms_norm_eps", "1e-6"), "config.json"), UserError);
  EXPECT_THROW(ModelConfig::from_json(with("rms_norm_eps", true), "config.json"), UserError);
  EXPECT_THROW(ModelConfig::from_json(with("tie_word_embeddings", 1), "config.json"), UserError);
  try {
    ModelConfig::from_json(with("hidden_size", 2.5), "dir/config.json");
    ADD_FAILURE() << "accepted hidden_size 2.5";
  } catch (const UserError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("dir/config.json"), std::string::npos) << m;
    EXPECT_NE(m.find("hidden_size"), std::string::npos) << m;
    EXPECT_NE(m.find("2.5"), std::string::npos) << m;
  }
  json lm = golden_config("tiny-lladamoe");
  lm["moe_layer_freq"] = json::array({0, "1"});
  EXPECT_THROW(ModelConfig::from_json(lm, "config.json"), UserError);
  lm["moe_layer_freq"] = json::array({0, 2});
  EXPECT_THROW(ModelConfig::from_json(lm, "config.json"), UserError);
}

TEST(ConfigHostile, TrainSectionMutationsParseOrRaiseUserError) {
  std::ifstream f(std::string(ECDLM_SOURCE_DIR) + "/configs/brown-small.json");
  const json base = json::parse(f).at("train");
  std::vector<std::string> keys;
  for (const auto& [k, v] : base.items()) keys.push_back(k);
  std::mt19937_64 rng(7);
  Outcomes out;
  for (int i = 0; i < 3000; ++i) {
    json t = base;
    test::mutate_json(t, rng, keys, {"eval_bins", "seed", "bf16", "grad_clip"}, {json::array({2, 4}), "cosine"});
    out.run([&] { TrainParams().update_from_json(t, "brown.json"); }, "brown.json", t);
  }
  out.expect_both(100, 1000);
  TrainParams p;
  EXPECT_THROW(p.update_from_json({{"batch_size", 2.5}}, "brown.json"), UserError);  // was 2
  EXPECT_THROW(p.update_from_json({{"max_steps", true}}, "brown.json"), UserError);  // was 1
  EXPECT_THROW(p.update_from_json({{"seed", -1}}, "brown.json"), UserError);         // was 2^64 - 1
  EXPECT_THROW(p.update_from_json({{"eval_bins", json::array({2, 0.5})}}, "brown.json"), UserError);
  p.update_from_json({{"batch_size", 8.0}, {"seed", UINT64_MAX}}, "brown.json");
  EXPECT_EQ(p.batch_size, 8);
  EXPECT_EQ(p.seed, UINT64_MAX);
}

// The experiment specs (configs/experiments/*.json) through load and plan: each edit plans its
// runs or raises UserError.
TEST(ConfigHostile, ExperimentMutationsPlanOrRaiseUserError) {
  const std::string src = ECDLM_SOURCE_DIR;
  const auto dir = test::temp_dir("exp-hostile");
  std::mt19937_64 rng(11);
  Outcomes out;
  for (const char* name : {"ec-vs-tc", "retrofit", "schedules"}) {
    std::ifstream f(src + "/configs/experiments/" + name + ".json");
    json base = json::parse(f);
    base["base"] = src + "/configs/brown-small.json";
    base["runs_dir"] = dir + "/runs";
    std::vector<std::string> keys;
    for (const auto& [k, v] : base.items()) keys.push_back(k);
    for (int i = 0; i < 500; ++i) {
      json e = base;
      test::mutate_json(e, rng, keys, {"k", "k_min", "schedule", "init_from", "variant", "seed", "experiment"},
                        {"static", "linear-reverse", json::object({{"experiment", 1}, {"variant", "x"}, {"seed", 1}}),
                         json::object({{"tokens", 100}})});
      const auto path = dir + "/spec.json";
      std::ofstream(path) << e.dump();
      // A spec names the failing file (itself, its base, a checkpoint it refers to) in its own way.
      out.run([&] { plan_experiment(ExperimentSpec::load(path, i % 2 == 0), dir + "/data"); }, "", e);
    }
  }
  out.expect_both(100, 500);
}

}  // namespace
}  // namespace ecdlm
