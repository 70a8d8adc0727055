// Continuous batching in bf16, the dtype a server runs LLaDA2 checkpoints in: a seeded row decodes
// the same tokens alone and inside a full, changing batch (issue 17). The golden tiny models are
// loaded as `ecdlm serve --dtype bf16` loads them (weights mapped, experts bound one per expert),
// so a step takes the real bf16 serving path: projections, dense MLP, shared expert, the grouped
// MoE kernel and the LM head on the AVX512-BF16 dot tiles at any row count (kernels/row_exact.h),
// attention per row (torch), f32 router and norms; token and dMoE block routing. Each row must
// also decode as `ecdlm generate` (threshold_generate) does. Block 16 failed before row_exact.h:
// a row alone was a 16-row product (small-M kernel), in a batch more (oneDNN).
// Rows differ in prompt length (0-70 tokens: 0-2 whole prompt blocks joining with the first
// block), seed, temperature, top-p, rule and output length, and join the batch at different
// steps (up to 8 at once; a late row joins rows that are blocks ahead).
// Kernels: the default cases force `--kernel avx512` (what `auto` is on a CPU with AVX512-BF16 and
// no AMX; on an AMX CPU `auto` is not row-exact, see kernels/row_exact.h) and skip on a CPU without
// AVX512-BF16. The _torch cases run `--kernel torch`, the path of such a CPU: oneDNN takes every
// bf16 product (ctest unit.continuous_bf16_avx512_core reruns them with oneDNN held to AVX-512
// without BF16, its emulation), the router's f32 product goes to BLAS.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>

#include "../test_util.h"
#include "ecdlm/generate/continuous.h"
#include "ecdlm/kernels/small_m.h"
#include "ecdlm/model/checkpoint.h"

using namespace ecdlm;

namespace {

struct Bf16Case {
  std::string model, routing;
  int64_t block_length = 32;
  bool torch_kernels = false;  // --kernel torch (else avx512): the path of a CPU without AVX512-BF16
};
void PrintTo(const Bf16Case& c, std::ostream* os) {
  *os << c.model << " " << c.routing << " block " << c.block_length << (c.torch_kernels ? " torch" : "");
}

// --kernel for one test, restored after it.
struct KernelChoice {
  explicit KernelChoice(kernels::SmallM k) : prev(kernels::small_m_choice()) { kernels::set_small_m(k); }
  ~KernelChoice() { kernels::set_small_m(prev); }
  kernels::SmallM prev;
};

MoeDlm load_bf16(const std::string& name) {
  LoadOptions lo;
  lo.dtype = torch::kBFloat16;
  lo.map_weights = true;  // as serve loads: experts bound per expert (the grouped MoE's input)
  return load_model(test::golden_dir(name), nullptr, lo);
}

constexpr size_t kRows = 8;

std::vector<int64_t> prompt(size_t i) {
  const int64_t len = std::vector<int64_t>{3, 0, 40, 17, 70, 33, 5, 64}[i];
  std::vector<int64_t> p;
  for (int64_t t = 0; t < len; ++t) p.push_back((len * 41 + t * 13 + static_cast<int64_t>(i)) % 290 + 1);
  return p;
}

gen::ThresholdParams row_params(const Bf16Case& c, size_t i) {
  gen::ThresholdParams p;
  p.gen_length = std::vector<int64_t>{64, 40, 96, 33, 64, 48, 80, 32}[i];
  p.block_length = c.block_length;
  p.steps = c.block_length / 4;
  p.threshold = 0.9;
  p.mask_id = 299;
  p.eos_id = -2;
  p.seed = 7 + 5 * i;
  p.temperature = i % 2 ? 1.0 : 0.0;
  p.top_p = i == 3 ? 0.9 : 1.0;
  if (i == 5) p.rule = gen::ThresholdRule::kFastThreshold;
  p.routing.policy = moe::parse_routing_policy(c.routing);
  p.routing.block_chunk = c.block_length;
  p.routing.block_min_experts = 12;
  return p;
}

}  // namespace

class ContinuousBf16 : public ::testing::TestWithParam<Bf16Case> {};

TEST_P(ContinuousBf16, RowsDecodeTheSameTokensAloneAndInAFullBatch) {
  const auto& c = GetParam();
  if (!test::has_golden(c.model)) GTEST_SKIP() << "golden fixtures missing";
  if (!c.torch_kernels && !kernels::cpu_has_avx512_bf16())
    GTEST_SKIP() << "no AVX512-BF16 on this CPU: its bf16 path is the _torch cases'";
  KernelChoice kc(c.torch_kernels ? kernels::SmallM::kTorch : kernels::SmallM::kAvx512);
  auto model = load_bf16(c.model);
  ASSERT_EQ(model->lm_head->weight.scalar_type(), torch::kBFloat16);
  gen::BatcherParams bp;
  bp.block_length = c.block_length;
  bp.routing = row_params(c, 0).routing;

  // Alone: each row in a batcher of its own.
  std::vector<gen::ThresholdResult> alone(kRows);
  for (size_t i = 0; i < kRows; ++i) {
    gen::ContinuousBatcher cb(model, bp);
    cb.add(prompt(i), row_params(c, i));
    while (cb.rows() > 0)
      for (auto& ev : cb.step())
        if (ev.finished) alone[i] = ev.result;
    ASSERT_FALSE(alone[i].tokens.empty()) << "row " << i;
    // The single-row decoder (`ecdlm generate`) computes the row alike.
    const auto ref = gen::threshold_generate(model, prompt(i), row_params(c, i));
    EXPECT_EQ(alone[i].tokens, ref.tokens) << "row " << i << " against threshold_generate";
    EXPECT_EQ(alone[i].forwards, ref.forwards) << "row " << i;
  }
  // In a batch: four rows start, one joins after each step until all eight run; then each row
  // that finishes is replaced by a second run of an earlier row (its seed and prompt), which
  // joins rows several blocks ahead of it.
  gen::ContinuousBatcher cb(model, bp);
  std::map<int64_t, size_t> row_of;
  for (size_t i = 0; i < 4; ++i) row_of[cb.add(prompt(i), row_params(c, i))] = i;
  size_t next = 4, rerun = 0, finished = 0;
  int64_t max_rows = 0;
  while (cb.rows() > 0) {
    gen::StepStats st;
    for (auto& ev : cb.step(&st)) {
      if (!ev.finished) continue;
      const size_t i = row_of[ev.id];
      EXPECT_EQ(ev.result.tokens, alone[i].tokens) << "row " << i << " in the batch";
      EXPECT_EQ(ev.result.forwards, alone[i].forwards) << "row " << i;
      ASSERT_EQ(ev.result.per_forward.size(), alone[i].per_forward.size()) << "row " << i;
      for (size_t f = 0; f < alone[i].per_forward.size(); ++f) {
        EXPECT_EQ(ev.result.per_forward[f].committed, alone[i].per_forward[f].committed) << "row " << i << " forward " << f;
        EXPECT_EQ(ev.result.per_forward[f].unique_experts_per_layer, alone[i].per_forward[f].unique_experts_per_layer)
            << "row " << i << " forward " << f;
      }
      ++finished;
      if (rerun < 3) row_of[cb.add(prompt(rerun), row_params(c, rerun))] = rerun, ++rerun;
    }
    max_rows = std::max(max_rows, st.rows);
    if (next < kRows) row_of[cb.add(prompt(next), row_params(c, next))] = next, ++next;
  }
  EXPECT_EQ(finished, kRows + 3);
  EXPECT_EQ(max_rows, static_cast<int64_t>(kRows)) << "the batch should be full at some step";
  EXPECT_EQ(cb.kv_bytes(), 0);
}

INSTANTIATE_TEST_SUITE_P(Rows, ContinuousBf16,
                         ::testing::Values(Bf16Case{"tiny", "token", 32}, Bf16Case{"tiny-dmoe", "block", 32},
                                           Bf16Case{"tiny-dmoe", "token", 16}, Bf16Case{"tiny-dmoe", "block", 16},
                                           Bf16Case{"tiny", "token", 32, true}, Bf16Case{"tiny-dmoe", "block", 32, true},
                                           Bf16Case{"tiny-dmoe", "token", 16, true}),
                         [](const auto& info) {
                           const auto& c = info.param;
                           std::string n = c.model + "_" + c.routing + "_b" + std::to_string(c.block_length) +
                                           (c.torch_kernels ? "_torch" : "");
                           for (auto& ch : n)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });
