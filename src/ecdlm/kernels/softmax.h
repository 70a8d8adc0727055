// Greedy picks over a vocabulary for the threshold decoders: per row the argmax token and its
// softmax probability, without materializing the [N, V] probabilities (torch's softmax spends
// most of a batched step's sampling time in its exp over every vocabulary entry).
#pragma once
#include <torch/torch.h>

namespace ecdlm::kernels {

// logits_NV f32, contiguous, CPU, no autograd, V >= 1, inside a kernels::F32TilesScope (the
// decoders) with a backend other than torch and a CPU with AVX512F.
bool greedy_prob_applies(const torch::Tensor& logits_NV);
// token_N (int64): the first index of each row's maximum, as argmax; prob_N (f64): its softmax
// probability 1 / sum_v exp(l_v - max) (f32 sum in a fixed order per row, exp relative error
// about 1e-7), so a row's result does not depend on the other rows. Requires greedy_prob_applies.
void greedy_prob(const torch::Tensor& logits_NV, torch::Tensor& token_N, torch::Tensor& prob_N);

}  // namespace ecdlm::kernels
