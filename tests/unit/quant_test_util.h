// Helpers shared by the quantized-kernel tests.
#pragma once
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <vector>

#include "ecdlm/io/quant_format.h"
#include "ecdlm/kernels/quant.h"
#include "ecdlm/kernels/quant_repack.h"

namespace ecdlm::test {

// Every packed format at both group sizes.
inline const std::vector<io::QuantFormat> kQuantFormats = {
    {io::QuantKind::kQ8, 32}, {io::QuantKind::kQ8, 64},    {io::QuantKind::kQ4, 32},
    {io::QuantKind::kQ4, 64}, {io::QuantKind::kQ4Sym, 32}, {io::QuantKind::kQ4Sym, 64}};

// N x K weights ~ N(0, 0.05²) with an all-zero group (row 0, inputs 32-63) and an extreme value (4.0,
// the last row's last input).
inline torch::Tensor awkward_weight(int64_t N, int64_t K) {
  auto w = torch::randn({N, K}) * 0.05;
  if (K >= 64) w.index_put_({0, torch::indexing::Slice(32, 64)}, 0.0F);
  w.index_put_({N - 1, K - 1}, 4.0F);
  return w;
}

// Fixture base for tests of the vnni kernels: skipped on a CPU without AVX512-VNNI.
class NeedsVnni : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!kernels::cpu_has_avx512_vnni()) GTEST_SKIP() << "no AVX512-VNNI";
  }
};

// Repacking on for one scope (a process-wide switch).
struct RepackOn {
  RepackOn() { kernels::set_quant_repack(true); }
  ~RepackOn() { kernels::set_quant_repack(false); }
};

// n random SwiGLU experts packed in format f (gate / up [F, D], down [D, F], weights ~ N(0, 0.1²),
// drawn expert by expert, gate, up, down), owned here; view() points the fused MoE at them.
struct RandomQuantExperts {
  std::vector<io::QuantWeight> gate, up, down;
  RandomQuantExperts(size_t n, int64_t F, int64_t D, io::QuantFormat f) {
    for (size_t e = 0; e < n; ++e) {
      gate.push_back(io::quantize(torch::randn({F, D}) * 0.1, f));
      up.push_back(io::quantize(torch::randn({F, D}) * 0.1, f));
      down.push_back(io::quantize(torch::randn({D, F}) * 0.1, f));
    }
  }
  kernels::QuantExperts view() const {
    kernels::QuantExperts all;
    for (size_t e = 0; e < gate.size(); ++e) {
      all.gate.push_back(&gate[e]);
      all.up.push_back(&up[e]);
      all.down.push_back(&down[e]);
    }
    return all;
  }
};

}  // namespace ecdlm::test
