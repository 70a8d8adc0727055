// Logits of the official LLaDA2 / LLaDA-MoE Python code on tiny random checkpoints
// (../shared/golden), reproduced through the normal loader in f32.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "../test_util.h"
#include "ecdlm/io/safetensors.h"
#include "ecdlm/model/checkpoint.h"

using namespace ecdlm;

namespace {

struct GoldenCase {
  std::string name;
  int64_t block_length;  // 0 = bidirectional
};

class GoldenForward : public ::testing::TestWithParam<GoldenCase> {};

TEST_P(GoldenForward, LogitsAndExpertChoices) {
  const auto& gc = GetParam();
  if (!test::has_golden(gc.name)) GTEST_SKIP() << "fixture missing: " << test::golden_dir(gc.name);
  auto model = load_model(test::golden_dir(gc.name));
  model->eval();
  auto golden = io::SafetensorsSet::open(test::golden_dir(gc.name) + "/golden.safetensors");
  auto ids = golden.get("input_ids").clone();
  auto want = golden.get("logits").clone();
  torch::NoGradGuard ng;
  ForwardOptions opt;
  opt.block_length = gc.block_length;
  auto got = model->forward(ids, opt).logits_BLV;
  double diff = (got - want).abs().max().item<double>();
  std::cout << gc.name << ": max |logits - golden| = " << diff << "  first: " << got[0][0][0].item<float>()
            << " vs " << want[0][0][0].item<float>() << "\n";
  EXPECT_LE(diff, 1e-4);

  // Expert choices per MoE layer, compared as sets per token.
  const auto& cfg = model->config();
  const auto B = ids.size(0), L = ids.size(1);
  auto x = model->model->word_embeddings(ids);
  auto pos = torch::arange(L, torch::kInt64);
  torch::Tensor mask;
  if (gc.block_length > 0) mask = block_causal_mask(0, L, L, gc.block_length);
  int64_t li = 0;
  for (auto& m : model->model->layers->children()) {
    auto layer = std::dynamic_pointer_cast<DecoderLayerImpl>(m);
    if (!layer->moe_mlp.is_empty()) {
      auto h = x + layer->attention->forward(layer->input_layernorm(x), pos, mask);
      auto plan = layer->moe_mlp->route(layer->post_attention_layernorm(h), {});
      auto want_idx = golden.get("topk_idx.layer" + std::to_string(li));
      auto got_sorted = std::get<0>(plan.idx_TK.sort(-1));
      auto want_sorted = std::get<0>(want_idx.reshape({B * L, cfg.num_experts_per_tok}).sort(-1));
      EXPECT_TRUE(torch::equal(got_sorted, want_sorted)) << "layer " << li;
    }
    x = layer->forward(x, rope_table(pos, cfg.rotary_dim(), cfg.rope_theta, x.scalar_type()), mask, {});
    ++li;
  }
}

INSTANTIATE_TEST_SUITE_P(Official, GoldenForward,
                         ::testing::Values(GoldenCase{"tiny", 16}, GoldenCase{"tiny-dmoe", 32},
                                           GoldenCase{"tiny-lladamoe", 0}),
                         [](const auto& info) {
                           std::string n = info.param.name;
                           for (auto& ch : n)
                             if (ch == '-') ch = '_';
                           return n;
                         });

}  // namespace
