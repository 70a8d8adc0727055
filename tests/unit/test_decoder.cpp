// LLaDA low-confidence-remasking decoder on tiny random MoeDlm models (token and expert choice).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "ecdlm/generate/decoder.h"
#include "ecdlm/util/error.h"

using namespace ecdlm;

namespace {

constexpr int64_t kMask = 39, kEos = 38, kVocab = 40;

ModelConfig tiny_config(RouterType rt) {
  ModelConfig c;
  c.vocab_size = kVocab;
  c.hidden_size = 32;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 4;
  c.head_dim = 8;
  c.num_experts = 4;
  c.num_experts_per_tok = 2;
  c.moe_intermediate_size = 16;
  c.shared_expert_intermediate_size = 16;
  c.mask_token_id = kMask;
  c.eos_token_id = kEos;
  c.router_type = rt;
  c.validate("test");
  return c;
}

// The default N(0, 0.02) init gives near-uniform logits; rescale so decisions are not near-ties.
MoeDlm tiny_model(RouterType rt, uint64_t seed = 7) {
  torch::manual_seed(seed);
  MoeDlm m(tiny_config(rt));
  torch::NoGradGuard ng;
  for (auto& kv : m->named_parameters()) {
    auto& t = kv.value();
    if (t.dim() >= 2) t.normal_(0.0, 1.0 / std::sqrt(static_cast<double>(t.size(-1))));
  }
  m->model->word_embeddings->weight.normal_(0.0, 1.0);
  m->lm_head->weight.normal_(0.0, 3.0 / std::sqrt(32.0));
  m->eval();
  return m;
}

torch::Tensor random_prompt(int64_t B, int64_t P, uint64_t seed) {
  auto g = at::detail::createCPUGenerator(seed);
  return torch::randint(0, kEos, {B, P}, g, torch::kInt64);  // no EOS / MASK in prompts
}

class DecoderBoth : public ::testing::TestWithParam<RouterType> {};

TEST_P(DecoderBoth, FillsEveryMaskAndKeepsPrompt) {
  auto model = tiny_model(GetParam());
  auto prompt = random_prompt(2, 5, 1);
  for (const char* rm : {"low_confidence", "random", "margin", "entropy"}) {
    for (bool stop : {false, true}) {
      gen::DecodeParams p;
      p.gen_length = 24;
      p.block_length = 8;
      p.steps = 12;
      p.temperature = 0.7;
      p.remasking = rm;
      p.stop_at_eos = stop;
      p.seed = 3;
      bool prompt_kept = true;
      auto res = gen::llada_generate(model, prompt, p, [&](const gen::StepInfo& s) {
        prompt_kept = prompt_kept && torch::equal(s.x_BL->narrow(1, 0, 5), prompt);
        return true;
      });
      SCOPED_TRACE(std::string(rm) + (stop ? " stop_at_eos" : ""));
      EXPECT_TRUE(prompt_kept);
      EXPECT_FALSE(res.cancelled);
      ASSERT_EQ(res.tokens_BG.sizes(), (std::vector<int64_t>{2, 24}));
      EXPECT_EQ((res.tokens_BG == kMask).sum().item<int64_t>(), 0);
      EXPECT_GE(res.tokens_BG.min().item<int64_t>(), 0);
      EXPECT_LT(res.tokens_BG.max().item<int64_t>(), kVocab);
      EXPECT_EQ(res.forwards, static_cast<int64_t>(res.forward_ms.size()));
      ASSERT_EQ(res.lengths.size(), 2u);
      for (int64_t r = 0; r < 2; ++r) {
        const int64_t len = res.lengths[static_cast<size_t>(r)];
        auto row = res.tokens_BG[r];
        EXPECT_EQ((row.narrow(0, 0, len) == kEos).sum().item<int64_t>(), 0);
        if (stop && len < 24)
          EXPECT_TRUE((row.narrow(0, len, 24 - len) == kEos).all().item<bool>());
      }
    }
  }
}

TEST_P(DecoderBoth, DeterministicPerSeed) {
  auto model = tiny_model(GetParam());
  auto prompt = random_prompt(1, 4, 2);
  gen::DecodeParams p;
  p.gen_length = 16;
  p.block_length = 8;
  p.steps = 8;
  p.temperature = 1.0;
  p.stop_at_eos = false;
  p.seed = 11;
  auto a = gen::llada_generate(model, prompt, p).tokens_BG;
  auto b = gen::llada_generate(model, prompt, p).tokens_BG;
  EXPECT_TRUE(torch::equal(a, b));
  bool any_differs = false;
  for (uint64_t s = 12; s < 16 && !any_differs; ++s) {
    p.seed = s;
    any_differs = !torch::equal(a, gen::llada_generate(model, prompt, p).tokens_BG);
  }
  EXPECT_TRUE(any_differs) << "temperature 1 gave the same output for 5 seeds";
  // Greedy with low-confidence remasking does not depend on the seed.
  p.temperature = 0.0;
  p.seed = 1;
  auto g1 = gen::llada_generate(model, prompt, p).tokens_BG;
  p.seed = 2;
  EXPECT_TRUE(torch::equal(g1, gen::llada_generate(model, prompt, p).tokens_BG));
}

TEST_P(DecoderBoth, CommitScheduleAndCfg) {
  auto model = tiny_model(GetParam());
  auto prompt = random_prompt(1, 3, 3);
  for (double cfg : {0.0, 1.5}) {
    gen::DecodeParams p;
    p.gen_length = 16;
    p.block_length = 8;
    p.steps = 6;  // 3 steps per block: 8 = 3 + 3 + 2
    p.cfg_scale = cfg;
    p.stop_at_eos = false;
    std::vector<int64_t> committed, blocks, new_per_step;
    int64_t masks_before = 16;
    bool inside_block = true;
    torch::Tensor prev = torch::full({1, 19}, kMask, torch::kInt64);
    prev.narrow(1, 0, 3).copy_(prompt);
    auto res = gen::llada_generate(model, prompt, p, [&](const gen::StepInfo& s) {
      EXPECT_EQ(s.total_steps, 6);
      EXPECT_EQ(s.step, static_cast<int64_t>(committed.size()));
      committed.push_back(s.committed);
      blocks.push_back(s.block);
      const int64_t masks = (*s.x_BL == kMask).sum().item<int64_t>();
      new_per_step.push_back(masks_before - masks);
      masks_before = masks;
      // Only positions of the current block changed.
      auto changed = (*s.x_BL != prev).nonzero();
      for (int64_t i = 0; i < changed.size(0); ++i) {
        const int64_t col = changed[i][1].item<int64_t>();
        inside_block = inside_block && col >= 3 + s.block * 8 && col < 3 + (s.block + 1) * 8;
      }
      prev = s.x_BL->clone();
      return true;
    });
    EXPECT_EQ(committed, (std::vector<int64_t>{3, 3, 2, 3, 3, 2})) << "cfg " << cfg;
    EXPECT_EQ(new_per_step, committed);
    EXPECT_EQ(blocks, (std::vector<int64_t>{0, 0, 0, 1, 1, 1}));
    EXPECT_TRUE(inside_block);
    EXPECT_EQ(res.forwards, 6);
  }
  EXPECT_EQ(gen::transfer_schedule(8, 3), (std::vector<int64_t>{3, 3, 2}));
  EXPECT_EQ(gen::transfer_schedule(32, 32), std::vector<int64_t>(32, 1));
  EXPECT_EQ(gen::transfer_schedule(4, 6), (std::vector<int64_t>{1, 1, 1, 1, 0, 0}));
}

TEST_P(DecoderBoth, CancelViaCallback) {
  auto model = tiny_model(GetParam());
  gen::DecodeParams p;
  p.gen_length = 16;
  p.block_length = 16;
  p.steps = 16;
  int64_t calls = 0;
  auto res = gen::llada_generate(model, random_prompt(1, 2, 4), p, [&](const gen::StepInfo& s) {
    ++calls;
    return s.step < 2;
  });
  EXPECT_TRUE(res.cancelled);
  EXPECT_EQ(calls, 3);
  EXPECT_EQ(res.forwards, 3);
  EXPECT_EQ((res.tokens_BG == kMask).sum().item<int64_t>(), 13);
}

// steps == gen_length, one block: each step commits exactly the single most confident masked
// position with its argmax token.
TEST_P(DecoderBoth, GreedyEqualsHandRolledArgmaxLoop) {
  auto model = tiny_model(GetParam());
  const int64_t P = 4, G = 12;
  auto prompt = random_prompt(1, P, 5);
  gen::DecodeParams p;
  p.gen_length = G;
  p.block_length = G;
  p.steps = G;
  p.stop_at_eos = false;
  auto got = gen::llada_generate(model, prompt, p).tokens_BG;

  torch::NoGradGuard ng;
  auto x = torch::full({1, P + G}, kMask, torch::kInt64);
  x.narrow(1, 0, P).copy_(prompt);
  for (int64_t s = 0; s < G; ++s) {
    ForwardOptions opt;
    opt.mask_ratio_B = (x == kMask).to(torch::kFloat32).mean(1);
    auto logits = model->forward(x, opt).logits_BLV[0].clone();  // [L, V]
    logits.select(1, kMask).fill_(-std::numeric_limits<float>::infinity());
    auto probs = logits.softmax(-1);
    int64_t best_pos = -1, best_tok = -1;
    float best_conf = -1.0f;
    for (int64_t j = P; j < P + G; ++j) {
      if (x[0][j].item<int64_t>() != kMask) continue;
      const int64_t tok = logits[j].argmax().item<int64_t>();
      const float conf = probs[j][tok].item<float>();
      if (conf > best_conf) {
        best_conf = conf;
        best_pos = j;
        best_tok = tok;
      }
    }
    ASSERT_GE(best_pos, 0);
    x[0][best_pos] = best_tok;
  }
  EXPECT_TRUE(torch::equal(got, x.narrow(1, P, G))) << got << "\nvs\n" << x.narrow(1, P, G);
}

INSTANTIATE_TEST_SUITE_P(Routers, DecoderBoth,
                         ::testing::Values(RouterType::kTokenChoice, RouterType::kExpertChoice),
                         [](const auto& info) {
                           return info.param == RouterType::kTokenChoice ? std::string("TC")
                                                                         : std::string("EC");
                         });

TEST(Decoder, BatchEqualsRowsAloneTokenChoice) {
  auto model = tiny_model(RouterType::kTokenChoice);
  auto prompt = random_prompt(2, 6, 6);
  for (bool stop : {false, true}) {
    gen::DecodeParams p;
    p.gen_length = 16;
    p.block_length = 8;
    p.steps = 8;
    p.stop_at_eos = stop;
    auto both = gen::llada_generate(model, prompt, p);
    for (int64_t r = 0; r < 2; ++r) {
      auto one = gen::llada_generate(model, prompt.narrow(0, r, 1), p);
      EXPECT_TRUE(torch::equal(both.tokens_BG.narrow(0, r, 1), one.tokens_BG)) << "row " << r;
      EXPECT_EQ(both.lengths[static_cast<size_t>(r)], one.lengths[0]);
    }
  }
}

TEST(Decoder, EmptyPromptAndBlockCausal) {
  auto model = tiny_model(RouterType::kTokenChoice);
  gen::DecodeParams p;
  p.gen_length = 16;
  p.block_length = 8;
  p.steps = 16;
  p.block_causal = 8;
  auto res = gen::llada_generate(model, torch::zeros({1, 0}, torch::kInt64), p);
  EXPECT_EQ(res.tokens_BG.size(1), 16);
  EXPECT_EQ((res.tokens_BG == kMask).sum().item<int64_t>(), 0);
}

TEST(Decoder, FilterTopKTopP) {
  auto l = torch::tensor({{1.0f, 4.0f, 3.0f, 2.0f}});
  const float ninf = -std::numeric_limits<float>::infinity();
  auto k2 = gen::filter_top_k_top_p(l, 2, 1.0);
  EXPECT_TRUE(torch::equal(k2, torch::tensor({{ninf, 4.0f, 3.0f, ninf}})));
  // softmax sorted: .644 .237 .087 .032 -> top_p 0.7 keeps the first two (the one crossing p).
  auto p7 = gen::filter_top_k_top_p(l, 0, 0.7);
  EXPECT_TRUE(torch::equal(p7, torch::tensor({{ninf, 4.0f, 3.0f, ninf}})));
  auto p1 = gen::filter_top_k_top_p(l, 0, 0.5);  // the first entry is always kept
  EXPECT_TRUE(torch::equal(p1, torch::tensor({{ninf, 4.0f, ninf, ninf}})));
  EXPECT_TRUE(torch::equal(gen::filter_top_k_top_p(l, 0, 1.0), l));

  // Sampling at T > 0 with top-k 1 is the argmax; its confidence is 1 on the filtered support.
  auto g = at::detail::createCPUGenerator(0);
  auto c = gen::sample_candidates(l.repeat({5, 1}), 2.0, 1, 1.0, gen::Remasking::kLowConfidence, g);
  EXPECT_TRUE((c.token_N == 1).all().item<bool>());
  EXPECT_NEAR(c.conf_N[0].item<double>(), 1.0, 1e-6);
  auto cm = gen::sample_candidates(l, 0.0, 0, 1.0, gen::Remasking::kMargin, g);
  auto pr = l.softmax(-1);
  EXPECT_NEAR(cm.conf_N[0].item<double>(), (pr[0][1] - pr[0][2]).item<double>(), 1e-6);
  auto ce = gen::sample_candidates(l, 0.0, 0, 1.0, gen::Remasking::kEntropy, g);
  EXPECT_NEAR(ce.conf_N[0].item<double>(), (pr * pr.log()).sum().item<double>(), 1e-6);
}

TEST(Decoder, SelectTopNTiesGoToLowerIndex) {
  const double ninf = -std::numeric_limits<double>::infinity();
  auto conf = torch::tensor({{0.5, 0.9, 0.5, ninf, 0.5}}, torch::kFloat64);
  auto sel = gen::select_top_n(conf, 2);
  EXPECT_TRUE(torch::equal(sel, torch::tensor({{true, true, false, false, false}})));
  // Never selects -inf entries even when n exceeds the candidates.
  auto all = gen::select_top_n(conf, 5);
  EXPECT_EQ(all.sum().item<int64_t>(), 4);
  EXPECT_FALSE(all[0][3].item<bool>());
}

TEST(Decoder, InvalidParamsAndModel) {
  auto model = tiny_model(RouterType::kTokenChoice);
  auto prompt = random_prompt(1, 2, 7);
  gen::DecodeParams p;
  p.gen_length = 20;
  p.block_length = 8;
  EXPECT_THROW(gen::llada_generate(model, prompt, p), UserError);
  p.gen_length = 16;
  p.steps = 3;  // 2 blocks
  EXPECT_THROW(gen::llada_generate(model, prompt, p), UserError);
  p.steps = 4;
  p.remasking = "bogus";
  EXPECT_THROW(gen::llada_generate(model, prompt, p), UserError);
  p.remasking = "low_confidence";
  p.top_p = 0.0;
  EXPECT_THROW(gen::llada_generate(model, prompt, p), UserError);
  p.top_p = 1.0;
  auto oov = torch::full({1, 2}, kVocab, torch::kInt64);
  EXPECT_THROW(gen::llada_generate(model, oov, p), UserError);

  auto cfg = tiny_config(RouterType::kTokenChoice);
  cfg.mask_token_id = -1;
  MoeDlm no_mask(cfg);
  EXPECT_THROW(gen::llada_generate(no_mask, prompt, p), UserError);
}

}  // namespace
