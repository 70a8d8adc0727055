#include "ecdlm/eval/elbo.h"

#include <chrono>
#include <cmath>

#include "ecdlm/util/compat.h"

namespace ecdlm {

nlohmann::json EvalResult::to_json() const {
  nlohmann::json j = {{"loss", loss}, {"ppl", ppl}, {"sequences", sequences}, {"seconds", seconds},
                      {"routing", routing.to_json()}};
  for (size_t n = 0; n < per_bin.size(); ++n) {
    const auto& b = per_bin[n];
    nlohmann::json arr = nlohmann::json::array();
    for (int64_t i = 0; i < b.bins(); ++i) {
      nlohmann::json e = {{"lo", b.lo(i)}, {"hi", b.hi(i)}, {"loss", b.mean(i)}, {"count", b.count(i)}};
      if (n < capacity_per_bin.size() && b.count(i) > 0 && seq_len > 0) {
        const double c = capacity_per_bin[n].mean(i);
        e["capacity"] = c;
        e["k"] = c * static_cast<double>(num_experts) / static_cast<double>(seq_len);
      }
      arr.push_back(e);
    }
    j["per_bin"][std::to_string(b.bins())] = arr;
  }
  return j;
}

namespace {
// Masks drawn per window, so results do not depend on the eval batch size.
NoisedBatch noise_rows(const torch::Tensor& x0_BL, int64_t mask_id, uint64_t seed, int64_t first,
                       int64_t sample) {
  std::vector<torch::Tensor> xt, m, r;
  for (int64_t i = 0; i < x0_BL.size(0); ++i) {
    auto nb = noise_batch(x0_BL.narrow(0, i, 1), mask_id,
                          mix_seed(seed, static_cast<uint64_t>(first + i), static_cast<uint64_t>(sample)));
    xt.push_back(nb.x_t_BL);
    m.push_back(nb.masked_BL);
    r.push_back(nb.r_B);
  }
  return {torch::cat(xt), torch::cat(m), torch::cat(r)};
}
// f32 [B]: EC capacity per sequence averaged over the MoE layers; undefined for TC / dense.
torch::Tensor mean_capacity_B(const std::vector<moe::RoutingStats>& layers) {
  torch::Tensor sum;
  int64_t n = 0;
  for (const auto& s : layers) {
    if (!s.capacity_B.defined()) continue;
    auto c = s.capacity_B.to(torch::kFloat32);
    sum = sum.defined() ? sum + c : c;
    ++n;
  }
  return n ? sum / static_cast<double>(n) : sum;
}
}  // namespace

EvalResult evaluate_elbo(MoeDlm& model, const data::EvalWindows& windows, const EvalParams& p,
                         const std::function<void(int64_t, int64_t)>& progress) {
  auto t0 = std::chrono::steady_clock::now();
  const bool was_training = model->is_training();
  model->eval();
  torch::NoGradGuard ng;
  EvalResult res;
  for (auto nb : p.bins) res.per_bin.emplace_back(nb);
  res.num_experts = model->config().num_experts;
  res.seq_len = windows.seq_len();
  const int64_t mask_id = model->config().mask_token_id;
  const int64_t total = windows.size() * p.mask_samples;
  double sum = 0.0;
  int64_t done = 0;
  for (int64_t s = 0; s < p.mask_samples; ++s) {
    for (int64_t first = 0; first < windows.size(); first += p.batch_size) {
      const int64_t count = std::min(p.batch_size, windows.size() - first);
      auto x0 = windows.batch(first, count);
      auto noised = noise_rows(x0, mask_id, p.seed, first, s);
      ForwardOptions opt;
      opt.mask_ratio_B = noised.r_B;
      opt.skip_lm_head = true;
      if (p.routing.policy != moe::RoutingPolicy::kToken) opt.routing = &p.routing;
      DiffusionLoss dl;
      {
        compat::CpuAutocast ac(p.bf16);
        auto fwd = model->forward(noised.x_t_BL, opt);
        dl = diffusion_loss(model, fwd.hidden_BLD, x0, noised, /*inverse_r=*/true);
      }
      const auto& layers = model->last_routing_stats();
      res.routing.add(layers);
      sum += dl.seq_loss_B.sum().item<double>();
      for (auto& b : res.per_bin) b.add(noised.r_B, dl.seq_loss_B);
      if (auto cap_B = mean_capacity_B(layers); cap_B.defined()) {
        if (res.capacity_per_bin.empty())
          for (auto nb : p.bins) res.capacity_per_bin.emplace_back(nb);
        for (auto& b : res.capacity_per_bin) b.add(noised.r_B, cap_B);
      }
      res.sequences += count;
      done += count;
      if (progress) progress(done, total);
    }
  }
  res.loss = res.sequences ? sum / static_cast<double>(res.sequences) : 0.0;
  res.ppl = std::exp(std::min(20.0, res.loss));
  res.routing = res.routing.averaged();
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (was_training) model->train();
  return res;
}

ClozeResult evaluate_cloze(MoeDlm& model, const data::EvalWindows& windows, int64_t span, const EvalParams& p) {
  const bool was_training = model->is_training();
  model->eval();
  torch::NoGradGuard ng;
  const int64_t L = windows.seq_len(), mask_id = model->config().mask_token_id;
  const int64_t lo = std::max<int64_t>(0, L / 2 - span / 2), n = std::min(span, L - lo);
  int64_t correct = 0, total = 0;
  for (int64_t first = 0; first < windows.size(); first += p.batch_size) {
    const int64_t count = std::min(p.batch_size, windows.size() - first);
    auto x0 = windows.batch(first, count);
    auto x = x0.clone();
    x.narrow(1, lo, n).fill_(mask_id);
    ForwardOptions opt;
    if (p.routing.policy != moe::RoutingPolicy::kToken) opt.routing = &p.routing;
    torch::Tensor logits;
    {
      compat::CpuAutocast ac(p.bf16);
      logits = model->forward(x, opt).logits_BLV;
    }
    auto pred = logits.narrow(1, lo, n).argmax(-1);
    correct += (pred == x0.narrow(1, lo, n)).sum().item<int64_t>();
    total += count * n;
  }
  if (was_training) model->train();
  return {total ? static_cast<double>(correct) / static_cast<double>(total) : 0.0, total};
}

}  // namespace ecdlm
