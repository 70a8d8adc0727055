// Quantized golden models (convert --quantize, issue 18): the tiny LLaDA2 / dMoE / LLaDA-MoE
// fixtures converted to q8 and q4 in both expert layouts, loaded mapped, against
//  - the bf16 model (the same conversion without --quantize): quality within stated tolerances;
//  - an f32 model holding the dequantized weights, through the torch (dequantize + GEMM) path:
//    equal up to f32 rounding, which proves the loader binds every packed tensor to the right
//    place (names, fused LLaDA-MoE q/k/v, per-expert and stacked slices).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <filesystem>

#include "../test_util.h"
#include "ecdlm/io/safetensors.h"
#include "ecdlm/kernels/quant.h"
#include "ecdlm/model/checkpoint.h"
#include "ecdlm/model/convert.h"
#include "ecdlm/moe/experts.h"
#include "ecdlm/util/fs.h"
#include "ecdlm/util/error.h"

using namespace ecdlm;

namespace {

struct QuantCase {
  std::string fixture;
  int64_t block_length;  // 0 = bidirectional
  ExpertLayout layout;
  std::string format;
};

std::string case_name(const QuantCase& c) {
  std::string n = c.fixture + "_" + (c.layout == ExpertLayout::kStacked ? "stacked" : "per_expert") + "_" + c.format;
  for (auto& ch : n)
    if (ch == '-') ch = '_';
  return n;
}

std::string convert_to(const QuantCase& c, const std::string& format, const std::string& dtype) {
  ConvertParams p;
  p.layout = c.layout;
  p.dtype = dtype;
  p.quantize.format = format;
  const auto dst = test::temp_dir("gq") + "/m";
  convert_checkpoint(test::golden_dir(c.fixture), dst, p);
  return dst;
}

torch::Tensor logits(MoeDlm& model, const torch::Tensor& ids, int64_t block_length) {
  torch::NoGradGuard ng;
  model->eval();
  ForwardOptions opt;
  opt.block_length = block_length;
  return model->forward(ids, opt).logits_BLV.to(torch::kFloat32);
}

bool any_of_names(const io::SafetensorsSet& st, const std::string& prefix, const std::string& suffix) {
  for (const auto& n : st.names())
    if (n.rfind(prefix, 0) == 0 && n.size() >= suffix.size() && n.compare(n.size() - suffix.size(), suffix.size(), suffix) == 0)
      return true;
  return false;
}

MoeDlm load_mapped(const std::string& dir, torch::ScalarType dt, LoadStats* stats = nullptr) {
  LoadOptions lo;
  lo.dtype = dt;
  lo.map_weights = true;
  return load_model(dir, nullptr, lo, stats);
}

struct Quality {
  double max_abs = 0, mean_abs = 0, kl = 0, top1 = 0;
};

// Over the masked positions (all positions when the model has no mask id).
Quality compare(const torch::Tensor& ref_BLV, const torch::Tensor& got_BLV, const torch::Tensor& ids, int64_t mask_id) {
  auto sel = mask_id >= 0 ? (ids == mask_id) : torch::ones_like(ids, torch::kBool);
  if (sel.sum().item<int64_t>() == 0) sel = torch::ones_like(ids, torch::kBool);
  const auto V = ref_BLV.size(-1);
  auto r = ref_BLV.reshape({-1, V}).index({sel.reshape({-1})}).to(torch::kFloat64);
  auto g = got_BLV.reshape({-1, V}).index({sel.reshape({-1})}).to(torch::kFloat64);
  Quality q;
  q.max_abs = (r - g).abs().max().item<double>();
  q.mean_abs = (r - g).abs().mean().item<double>();
  auto lp = torch::log_softmax(r, -1), lq = torch::log_softmax(g, -1);
  q.kl = (lp.exp() * (lp - lq)).sum(-1).mean().item<double>();
  q.top1 = (r.argmax(-1) == g.argmax(-1)).to(torch::kFloat64).mean().item<double>();
  return q;
}

class GoldenQuant : public ::testing::TestWithParam<QuantCase> {};

// Quality against the official f32 logits, relative to what bf16 weights alone cost. The LLaDA2
// fixtures are random models whose sigmoid routing margins are ~2e-5 (README of the fixtures):
// any weight perturbation, bf16's included, flips routed experts somewhere, so the bound is
// relative: mean |delta| at most 3x (q8) / 10x (q4) bf16's own (floor 1e-3), KL at most 3x / 20x
// bf16's (floor 1e-6), and top-1 agreement over the masked positions at most 0.15 (q8) / 0.6 (q4)
// below bf16's. LLaDA-MoE (softmax routing, wide margins) meets tight absolute bounds as well:
// q8 mean |delta| <= 1e-3 and q4 <= 5e-3 against bf16, top-1 = 1.
TEST_P(GoldenQuant, LogitsNearBf16) {
  const auto& c = GetParam();
  if (!test::has_golden(c.fixture)) GTEST_SKIP() << "fixture missing: " << test::golden_dir(c.fixture);
  auto golden = io::SafetensorsSet::open(test::golden_dir(c.fixture) + "/golden.safetensors");
  auto ids = golden.get("input_ids").clone();
  auto ref32 = golden.get("logits").clone();

  const auto bf16_dir = convert_to(c, "", "bf16");
  const auto q_dir = convert_to(c, c.format, "bf16");
  auto bf16 = load_mapped(bf16_dir, torch::kBFloat16);
  LoadStats st;
  auto qm = load_mapped(q_dir, torch::kBFloat16, &st);
  EXPECT_TRUE(st.quantized);
  EXPECT_EQ(st.stacked_experts, c.layout == ExpertLayout::kStacked);
  const int64_t mask = bf16->config().mask_token_id;
  const auto lb = logits(bf16, ids, c.block_length), lq = logits(qm, ids, c.block_length);
  const auto b = compare(ref32, lb, ids, mask), q = compare(ref32, lq, ids, mask), qb = compare(lb, lq, ids, mask);
  std::cout << case_name(c) << " vs f32: bf16 mean |d| " << b.mean_abs << " KL " << b.kl << " top-1 " << b.top1
            << " | " << c.format << " mean |d| " << q.mean_abs << " max |d| " << q.max_abs << " KL " << q.kl
            << " top-1 " << q.top1 << " | vs bf16: mean |d| " << qb.mean_abs << " top-1 " << qb.top1 << "\n";
  const bool q8 = c.format == "q8";
  EXPECT_LE(q.mean_abs, (q8 ? 3.0 : 10.0) * std::max(b.mean_abs, 1e-3));
  EXPECT_LE(q.kl, (q8 ? 3.0 : 20.0) * std::max(b.kl, 1e-6));
  EXPECT_GE(q.top1, b.top1 - (q8 ? 0.15 : 0.6));
  if (c.fixture == "tiny-lladamoe") {
    EXPECT_LE(qb.mean_abs, q8 ? 1e-3 : 5e-3);
    EXPECT_EQ(qb.top1, 1.0);
  }
}

// The loader binds every packed tensor where it belongs: each quantized module of the loaded
// model, through the torch path in f32 (exact activations, dequantized f32 weights), equals the
// same module of the f32 model with its weights replaced by their dequantization, and so does the
// whole forward (measured: bit-identical on all three fixtures, both layouts, q8 and q4).
TEST_P(GoldenQuant, TorchPathEqualsDequantizedModel) {
  const auto& c = GetParam();
  if (!test::has_golden(c.fixture)) GTEST_SKIP() << "fixture missing: " << test::golden_dir(c.fixture);
  auto golden = io::SafetensorsSet::open(test::golden_dir(c.fixture) + "/golden.safetensors");
  auto ids = golden.get("input_ids").clone();
  const auto q_dir = convert_to(c, c.format, "keep");
  auto qm = load_mapped(q_dir, torch::kFloat32);
  auto deq = load_model(test::golden_dir(c.fixture));  // f32, private copies
  torch::NoGradGuard ng;
  const auto saved = kernels::quant_kernel_choice();
  kernels::set_quant_kernel(kernels::QuantKernel::kTorch);
  auto deq_modules = deq->named_modules();
  int64_t replaced = 0;
  double module_diff = 0;
  for (const auto& m : qm->named_modules()) {
    if (auto lin = std::dynamic_pointer_cast<LinearNoBiasImpl>(m.value()); lin && lin->quantized()) {
      auto target = std::dynamic_pointer_cast<LinearNoBiasImpl>(deq_modules[m.key()]);
      ASSERT_TRUE(target) << m.key();
      target->weight.copy_(io::dequantize(lin->quant()));
      const auto x = torch::randn({5, lin->quant().K});
      module_diff = std::max(module_diff, (lin->forward(x) - target->forward(x)).abs().max().item<double>());
      ++replaced;
    }
    if (auto ex = std::dynamic_pointer_cast<moe::ExpertsImpl>(m.value()); ex && ex->quantized()) {
      auto target = std::dynamic_pointer_cast<moe::ExpertsImpl>(deq_modules[m.key()]);
      ASSERT_TRUE(target) << m.key();
      torch::Tensor* w[3] = {&target->gate_proj, &target->up_proj, &target->down_proj};
      for (int p = 0; p < 3; ++p)
        for (int64_t e = 0; e < ex->num_experts(); ++e) (*w[p])[e].copy_(io::dequantize(ex->quant_w(p, e)));
      for (int64_t e = 0; e < ex->num_experts(); ++e) {
        const auto x = torch::randn({3, ex->quant_w(0, e).K});
        module_diff =
            std::max(module_diff, (ex->forward_one(e, x) - target->forward_one(e, x)).abs().max().item<double>());
      }
      ++replaced;
    }
  }
  EXPECT_GT(replaced, 3);
  const auto got = logits(qm, ids, c.block_length);
  kernels::set_quant_kernel(saved);
  const auto want = logits(deq, ids, c.block_length);
  const double diff = (got - want).abs().max().item<double>();
  std::cout << case_name(c) << ": max |module(quant, torch) - module(dequantized f32)| = " << module_diff
            << ", logits " << diff << "\n";
  EXPECT_LE(module_diff, 1e-4);
  EXPECT_LE(diff, 2e-4);
}

std::vector<QuantCase> cases() {
  std::vector<QuantCase> out;
  for (const auto& [fx, bl] : std::vector<std::pair<std::string, int64_t>>{{"tiny", 16}, {"tiny-dmoe", 32}, {"tiny-lladamoe", 0}})
    for (auto layout : {ExpertLayout::kPerExpert, ExpertLayout::kStacked})
      for (const char* f : {"q8", "q4"}) out.push_back({fx, bl, layout, f});
  return out;
}

INSTANTIATE_TEST_SUITE_P(Formats, GoldenQuant, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return case_name(info.param); });

TEST(QuantCheckpoint, TrainingLoadAndReconvertAreRefused) {
  if (!test::has_golden("tiny")) GTEST_SKIP();
  QuantCase c{"tiny", 16, ExpertLayout::kPerExpert, "q8"};
  const auto q_dir = convert_to(c, "q8", "bf16");
  try {
    load_model(q_dir);  // private copies for training
    FAIL() << "expected a UserError";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("inference only"), std::string::npos) << e.what();
  }
  ConvertParams p;
  p.quantize.format = "q4";
  EXPECT_THROW(convert_checkpoint(q_dir, test::temp_dir("gq") + "/again", p), UserError);
  ExportParams ep;
  EXPECT_THROW(export_llada2(q_dir, test::temp_dir("gq") + "/exp", ep), UserError);
}

TEST(QuantCheckpoint, SelectionAndConfigBlock) {
  if (!test::has_golden("tiny")) GTEST_SKIP();
  ConvertParams p;
  p.quantize.format = "q4";
  p.quantize.group = 64;
  p.quantize.exclude = {"attention"};
  p.quantize.lm_head = true;
  const auto dst = test::temp_dir("gq") + "/m";
  const auto rep = convert_checkpoint(test::golden_dir("tiny"), dst, p);
  auto st = io::SafetensorsSet::open(dst);
  EXPECT_TRUE(st.has("lm_head.qweight"));
  EXPECT_TRUE(st.has("lm_head.mins"));
  EXPECT_TRUE(st.has("model.layers.0.attention.query_key_value.weight"));  // excluded
  EXPECT_TRUE(st.has("model.layers.0.mlp.gate_proj.qweight"));             // dense MLP
  EXPECT_TRUE(st.has("model.layers.1.mlp.shared_experts.up_proj.qweight"));
  // K = 32 (down projections) does not fit a group of 64: kept, listed; routed experts (whose
  // down projection cannot be packed) stay whole.
  EXPECT_TRUE(st.has("model.layers.1.mlp.shared_experts.down_proj.weight"));
  EXPECT_TRUE(st.has("model.layers.1.mlp.experts.3.gate_proj.weight"));
  EXPECT_TRUE(st.has("model.layers.1.mlp.gate.weight"));  // the router stays
  EXPECT_TRUE(st.has("model.word_embeddings.weight"));
  const auto cfg = read_json_file(dst + "/config.json");
  const auto& q = cfg.at("quantization");
  EXPECT_EQ(q.at("format"), "q4_g64");
  EXPECT_EQ(q.at("group_size"), 64);
  EXPECT_EQ(q.at("tensors"), rep.quantized);
  EXPECT_EQ(q.at("quantized"), nlohmann::json({"shared_experts", "dense_mlp", "lm_head"}));
  EXPECT_EQ(q.at("not_quantized").size(), rep.not_quantized.size());
  EXPECT_GT(rep.not_quantized.size(), 16u * 3);
  auto m = load_mapped(dst, torch::kBFloat16);
  EXPECT_TRUE(m->lm_head->quantized());
  // Bad patterns name the flag.
  ConvertParams bad;
  bad.quantize.format = "q8";
  bad.quantize.include = {"("};
  try {
    convert_checkpoint(test::golden_dir("tiny"), test::temp_dir("gq") + "/bad", bad);
    FAIL();
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("--quantize-include"), std::string::npos) << e.what();
  }
}

// Routed experts are decided per layer by <prefix>.mlp.experts.gate_proj (review bug: a pattern
// naming down_proj or one expert used to pack part of a layer's experts, and the loader then refused
// the file). Patterns still choose among shared experts, dense MLPs and attention per tensor.
TEST(QuantCheckpoint, RoutedExpertsPackWholeWhateverThePatterns) {
  if (!test::has_golden("tiny-dmoe")) GTEST_SKIP();
  const auto convert = [](std::vector<std::string> exclude, ExpertLayout layout) {
    ConvertParams p;
    p.layout = layout;
    p.dtype = "bf16";
    p.quantize.format = "q8";
    p.quantize.exclude = std::move(exclude);
    const auto dst = test::temp_dir("gq") + "/m";
    convert_checkpoint(test::golden_dir("tiny-dmoe"), dst, p);
    return dst;
  };
  const auto experts_packed = [](MoeDlm& m, int layer) {  // layer: 1 or 2 (layer 0 is dense)
    return m->moe_blocks().at(size_t(layer - 1))->experts->quantized();
  };
  for (auto layout : {ExpertLayout::kPerExpert, ExpertLayout::kStacked}) {
    // down_proj: the shared expert's and the dense MLP's stay bf16, routed experts pack whole.
    auto dir = convert({"down_proj"}, layout);
    auto st = io::SafetensorsSet::open(dir);
    EXPECT_TRUE(st.has("model.layers.1.mlp.shared_experts.down_proj.weight"));
    EXPECT_TRUE(st.has("model.layers.1.mlp.shared_experts.gate_proj.qweight"));
    EXPECT_TRUE(st.has("model.layers.0.mlp.down_proj.weight"));
    EXPECT_TRUE(st.has(layout == ExpertLayout::kStacked ? "model.layers.1.mlp.experts.down_proj.qweight"
                                                        : "model.layers.1.mlp.experts.7.down_proj.qweight"));
    auto m = load_mapped(dir, torch::kBFloat16);
    EXPECT_TRUE(experts_packed(m, 1) && experts_packed(m, 2));
    EXPECT_FALSE(m->moe_blocks()[0]->shared_experts->down_proj->quantized());
    // One expert named: no effect on routed experts (a warning says so); the file loads.
    dir = convert({"experts\\.3\\."}, layout);
    m = load_mapped(dir, torch::kBFloat16);
    EXPECT_TRUE(experts_packed(m, 1) && experts_packed(m, 2));
    // A layer's expert module named: that layer's experts stay bf16 whole.
    dir = convert({"^model\\.layers\\.1\\.mlp\\.experts"}, layout);
    st = io::SafetensorsSet::open(dir);
    EXPECT_FALSE(any_of_names(st, "model.layers.1.mlp.experts", ".qweight"));
    m = load_mapped(dir, torch::kBFloat16);
    EXPECT_FALSE(experts_packed(m, 1));
    EXPECT_TRUE(experts_packed(m, 2));
  }
}

}  // namespace
