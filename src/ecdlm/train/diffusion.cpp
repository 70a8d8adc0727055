#include "ecdlm/train/diffusion.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>

namespace ecdlm {

uint64_t mix_seed(uint64_t a, uint64_t b, uint64_t c) {
  auto sm = [](uint64_t x) {
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
  };
  return sm(sm(sm(a) ^ b) ^ c);
}

NoisedBatch noise_batch(const torch::Tensor& x0_BL, int64_t mask_id, uint64_t seed, double t_min,
                        double t_max) {
  const auto B = x0_BL.size(0), L = x0_BL.size(1);
  auto gen = at::detail::createCPUGenerator(seed);
  auto t_B = torch::rand({B}, gen);
  if (t_min != 0.0 || t_max != 1.0) t_B = t_min + (t_max - t_min) * t_B;
  auto u_BL = torch::rand({B, L}, gen);
  auto masked = u_BL < t_B.unsqueeze(1);
  // Rows without a mask get one uniformly random masked position.
  auto forced_B = torch::randint(L, {B}, gen, torch::kInt64);
  auto none_B = masked.sum(1) == 0;
  auto force_BL = torch::zeros({B, L}, torch::kBool).scatter_(1, forced_B.unsqueeze(1), none_B.unsqueeze(1));
  masked = masked.logical_or(force_BL);
  NoisedBatch nb;
  nb.masked_BL = masked;
  nb.x_t_BL = torch::where(masked, torch::full_like(x0_BL, mask_id), x0_BL);
  nb.r_B = masked.sum(1).to(torch::kFloat32) / static_cast<double>(L);
  return nb;
}

torch::Tensor masked_rows(const torch::Tensor& masked_BL) { return masked_BL.reshape({-1}).nonzero().squeeze(1); }

torch::Tensor masked_logits(MoeDlm& model, const torch::Tensor& hidden_BLD, const torch::Tensor& rows_M) {
  const auto D = hidden_BLD.size(2);
  auto h_MD = hidden_BLD.reshape({-1, D}).index_select(0, rows_M);
  return model->lm_head(h_MD).to(torch::kFloat32);
}

torch::Tensor distill_kl(const torch::Tensor& teacher_logits_MV, const torch::Tensor& student_logits_MV,
                         double temperature) {
  const double inv_t = 1.0 / temperature;
  auto logp_t_MV = torch::log_softmax(teacher_logits_MV.detach().to(torch::kFloat32) * inv_t, -1);
  auto logp_s_MV = torch::log_softmax(student_logits_MV.to(torch::kFloat32) * inv_t, -1);
  // Written out (not kl_div) so identical logits give exactly 0.
  auto kl_M = (logp_t_MV.exp() * (logp_t_MV - logp_s_MV)).sum(-1);
  const auto M = std::max<int64_t>(1, kl_M.size(0));
  return kl_M.sum() * (temperature * temperature / static_cast<double>(M));
}

DiffusionLoss diffusion_loss(MoeDlm& model, const torch::Tensor& hidden_BLD,
                             const torch::Tensor& x0_BL, const NoisedBatch& nb, bool inverse_r,
                             bool per_masked_token) {
  const auto B = x0_BL.size(0), L = x0_BL.size(1);
  auto rows = masked_rows(nb.masked_BL);
  auto logits_MV = masked_logits(model, hidden_BLD, rows);
  auto target_M = x0_BL.reshape({-1}).index_select(0, rows);
  auto ce_M = torch::nn::functional::cross_entropy(
      logits_MV, target_M, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
  auto seq_M = torch::div(rows, L, "floor");
  auto w_B = inverse_r ? 1.0 / nb.r_B : torch::ones_like(nb.r_B);
  auto weighted_M = ce_M * w_B.index_select(0, seq_M);
  DiffusionLoss out;
  out.loss = per_masked_token ? ce_M.sum() / static_cast<double>(std::max<int64_t>(1, rows.size(0)))
                              : weighted_M.sum() / static_cast<double>(B * L);
  auto ce_sum_B = torch::zeros({B}, torch::kFloat32).index_add(0, seq_M, ce_M.detach());
  out.seq_loss_B = ce_sum_B / nb.r_B / static_cast<double>(L);
  out.logits_MV = logits_MV;
  out.rows_M = rows;
  out.masked_tokens = rows.size(0);
  return out;
}

void BinnedLoss::add(const torch::Tensor& r_B, const torch::Tensor& seq_loss_B) {
  auto r = r_B.contiguous();
  auto l = seq_loss_B.contiguous();
  const float* rp = r.data_ptr<float>();
  const float* lp = l.data_ptr<float>();
  const int64_t nb = bins();
  for (int64_t b = 0; b < r.size(0); ++b) {
    // Bins [lo, hi), the last one closed.
    auto bin = std::min<int64_t>(nb - 1, static_cast<int64_t>(rp[b] * static_cast<float>(nb)));
    sum_[bin] += lp[b];
    count_[bin] += 1;
  }
}

}  // namespace ecdlm
