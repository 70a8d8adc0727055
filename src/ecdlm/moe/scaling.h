// Norm-matching scaling factors between routed and shared experts (ec-dlm.md §2.3, §4.1).
#pragma once
#include <cstdint>
#include <vector>

namespace ecdlm::moe {

// phi(n) for n = 0..max_n: mean of sqrt(s_sh) / ||softmax(z_1..z_n)||_2 over 10k Gaussian draws
// (fixed seed 42); phi(0) = 1. Depends only on n and s_sh (the selected probabilities renormalized
// are a softmax of n i.i.d. normals). Cached per (max_n, s_sh).
const std::vector<float>& ec_scaling_table(int64_t max_n, double s_sh);

// Constant TC factor: mean sqrt(s_sh) / ||renormalized top-k softmax of E i.i.d. N(0,1) logits||.
double tc_scaling_factor(int64_t num_experts, int64_t k, double s_sh);

}  // namespace ecdlm::moe
