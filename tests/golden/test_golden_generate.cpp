// The official LLaDA2 / dMoE generate() and block-routed (dMoE) forward on tiny random
// checkpoints (../shared/golden): tokens, unique experts per block, dMoE logits, expert choices
// and coresets, reproduced through the normal loader in f32.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "../test_util.h"
#include "ecdlm/generate/threshold.h"
#include "ecdlm/io/safetensors.h"
#include "ecdlm/model/checkpoint.h"
#include "ecdlm/util/fs.h"

using namespace ecdlm;
using nlohmann::json;

namespace {

struct GenCase {
  std::string model, name;
};

std::vector<int64_t> to_vec(const torch::Tensor& t) {
  auto c = t.reshape({-1}).to(torch::kInt64).contiguous();
  return {c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel()};
}

gen::ThresholdParams params_of(const json& g) {
  const auto& a = g["args"];
  gen::ThresholdParams p;
  p.temperature = a["temperature"];
  p.block_length = a["block_length"];
  p.steps = a["steps"];
  p.gen_length = a["gen_length"];
  p.threshold = a["threshold"];
  p.eos_id = a["eos_id"];
  p.mask_id = a["mask_id"];
  p.eos_early_stop = a["eos_early_stop"];
  p.minimal_topk = a["minimal_topk"];
  p.kv_cache = g["kv_cache"];
  if (g["variant"] == "dmoe_be") {
    p.routing.policy = moe::RoutingPolicy::kBlock;
    p.routing.block_top_p = g["core_threshold"];
    p.routing.block_min_experts = g["guard_size"];
    p.routing.block_chunk = 32;
  }
  return p;
}

class GoldenGenerate : public ::testing::TestWithParam<GenCase> {};

TEST_P(GoldenGenerate, TokensAndUniqueExperts) {
  const auto& gc = GetParam();
  if (!test::has_golden(gc.model)) GTEST_SKIP() << "fixture missing: " << test::golden_dir(gc.model);
  const auto dir = test::golden_dir(gc.model);
  auto meta = read_json_file(dir + "/golden.json")["generate"][gc.name];
  auto golden = io::SafetensorsSet::open(dir + "/golden.safetensors");
  auto prompt = to_vec(golden.get("gen." + gc.name + ".prompt"));
  auto want = to_vec(golden.get("gen." + gc.name + ".output"));
  if (meta["output_includes_prompt"].get<bool>()) want.erase(want.begin(), want.begin() + static_cast<long>(prompt.size()));
  auto model = load_model(dir);
  auto p = params_of(meta);
  auto got = gen::threshold_generate(model, prompt, p);
  EXPECT_EQ(got.tokens, want) << gc.model << " " << gc.name;
  // The official code appends each finished block in a forward of its own; ecdlm's rides along
  // with the next block's first forward.
  EXPECT_EQ(got.forwards + got.cache_forwards + got.ride_along_appends, meta["model_forwards"].get<int64_t>());
  if (meta["avg_unique_experts_per_layer"].is_number())
    EXPECT_NEAR(got.avg_unique_experts_per_layer, meta["avg_unique_experts_per_layer"].get<double>(), 1e-9);
  // The exact prefix cache: the same tokens with the cache on and off (token routing; block
  // routing routes the cached prefix differently by design, §1.3).
  if (p.routing.policy == moe::RoutingPolicy::kToken) {
    p.kv_cache = !p.kv_cache;
    auto other = gen::threshold_generate(model, prompt, p);
    EXPECT_EQ(other.tokens, want) << "kv_cache=" << p.kv_cache;
  }
}

INSTANTIATE_TEST_SUITE_P(Official, GoldenGenerate,
                         ::testing::Values(GenCase{"tiny", "hf_a"}, GenCase{"tiny", "hf_b"}, GenCase{"tiny", "hf_eos"},
                                           GenCase{"tiny", "hf_eos_early"}, GenCase{"tiny-dmoe", "hf"},
                                           GenCase{"tiny-dmoe", "dmoe_base"}, GenCase{"tiny-dmoe", "dmoe_p0.6"},
                                           GenCase{"tiny-dmoe", "dmoe_p0.5"}, GenCase{"tiny-dmoe", "dmoe_p0.6_eos_early"}),
                         [](const auto& info) {
                           std::string n = info.param.model + "_" + info.param.name;
                           for (auto& ch : n)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });

class GoldenBlockRouting : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenBlockRouting, LogitsExpertsAndCoresets) {
  const std::string tag = GetParam();  // "0.6" / "0.5"
  if (!test::has_golden("tiny-dmoe")) GTEST_SKIP();
  const auto dir = test::golden_dir("tiny-dmoe");
  auto meta = read_json_file(dir + "/golden.json");
  auto fm = meta["dmoe_forward"]["dmoe_p" + tag];
  auto golden = io::SafetensorsSet::open(dir + "/golden.safetensors");
  auto model = load_model(dir);
  model->eval();
  torch::NoGradGuard ng;
  moe::InferenceRouting r;
  r.policy = moe::RoutingPolicy::kBlock;
  r.block_top_p = fm["core_threshold"];
  r.block_min_experts = fm["guard_size"];
  r.block_chunk = fm["gate_block_size"];
  ForwardOptions opt;
  opt.block_length = meta["forward"]["block_length"];
  opt.routing = &r;
  auto ids = golden.get("input_ids").clone();
  auto got = model->forward(ids, opt).logits_BLV;
  auto want = golden.get("logits_dmoe_p" + tag).clone();
  const double diff = (got - want).abs().max().item<double>();
  std::cout << "dmoe p" << tag << ": max |logits - golden| = " << diff << "\n";
  EXPECT_LE(diff, 1e-4);
  const auto B = ids.size(0), L = ids.size(1);
  int64_t li = 1;  // layer 0 is dense
  for (auto& blk : model->moe_blocks()) {
    const auto& plan = blk->last_plan();
    const auto K = plan.idx_TK.size(1);
    auto want_idx = golden.get("topk_idx_dmoe_p" + tag + ".layer" + std::to_string(li));
    EXPECT_TRUE(torch::equal(std::get<0>(plan.idx_TK.sort(-1)), std::get<0>(want_idx.reshape({B * L, K}).sort(-1))))
        << "layer " << li;
    auto want_core = golden.get("coreset_dmoe_p" + tag + ".layer" + std::to_string(li)).to(torch::kBool);
    EXPECT_TRUE(torch::equal(plan.coreset_BCE, want_core)) << "coreset, layer " << li;
    ++li;
  }
}

INSTANTIATE_TEST_SUITE_P(Official, GoldenBlockRouting, ::testing::Values("0.6", "0.5"),
                         [](const auto& info) { return "p" + std::string(info.param == "0.6" ? "06" : "05"); });

}  // namespace
