#include "ecdlm/eval/elbo.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "ecdlm/moe/moe_block.h"
#include "ecdlm/util/compat.h"
#include "ecdlm/util/error.h"

namespace ecdlm {

nlohmann::json EvalResult::to_json() const {
  nlohmann::json j = {{"loss", loss}, {"ppl", ppl}, {"sequences", sequences}, {"seconds", seconds},
                      {"routing", routing.to_json()}, {"mask_mode", mask_mode}, {"block_length", block_length},
                      {"unique_experts_per_block", unique_experts_per_block}};
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
// Semi-autoregressive noising (EvalParams::mask_mode "semi-ar"): per row one block b drawn
// uniformly, positions before it clean, the block noised as in training, positions after it masked.
// masked_BL marks the scored (block) positions and r_B is the block's realized ratio; the input's
// masked fraction, which EC capacity follows, goes to *input_r_B.
NoisedBatch noise_rows_semi_ar(const torch::Tensor& x0_BL, int64_t mask_id, uint64_t seed, int64_t first,
                               int64_t sample, int64_t block, torch::Tensor* input_r_B) {
  const int64_t L = x0_BL.size(1), blocks = L / block;
  std::vector<torch::Tensor> xt, m, r;
  for (int64_t i = 0; i < x0_BL.size(0); ++i) {
    const uint64_t s = mix_seed(seed, static_cast<uint64_t>(first + i), static_cast<uint64_t>(sample));
    auto gen = at::detail::createCPUGenerator(mix_seed(s, 0x5e4a));
    const int64_t b = torch::randint(blocks, {1}, gen, torch::kInt64).item<int64_t>();
    auto nb = noise_batch(x0_BL.narrow(0, i, 1).narrow(1, b * block, block), mask_id, s);
    auto x_t = x0_BL.narrow(0, i, 1).clone();
    auto scored = torch::zeros({1, L}, torch::kBool);
    x_t.narrow(1, b * block, block).copy_(nb.x_t_BL);
    x_t.narrow(1, (b + 1) * block, L - (b + 1) * block).fill_(mask_id);
    scored.narrow(1, b * block, block).copy_(nb.masked_BL);
    xt.push_back(x_t);
    m.push_back(scored);
    r.push_back(nb.r_B);
  }
  NoisedBatch out{torch::cat(xt), torch::cat(m), torch::cat(r)};
  *input_r_B = (out.x_t_BL == mask_id).sum(1).to(torch::kFloat32) / static_cast<double>(L);
  return out;
}
// Sum over MoE layers, aligned blocks and the batch's B sequences of the distinct experts a block
// uses; `count` gets the (layer, block, sequence) triples added.
double sum_unique_experts(MoeDlm& model, int64_t B, int64_t L, int64_t block, int64_t& count) {
  double sum = 0.0;
  for (auto& blk : model->moe_blocks()) {
    const auto& plan = blk->last_plan();
    if (!plan.idx_TK.defined() && !plan.token_EN.defined()) continue;
    for (int64_t row0 = 0; row0 < L; row0 += block) {
      sum += moe::unique_experts(plan, B, L, row0, std::min(block, L - row0)) * static_cast<double>(B);
      count += B;
    }
  }
  return sum;
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
// Distributed evaluation: every partial sum of `res` (and the loss / unique-expert sums) summed
// over the processes with p.all_reduce. The layout is the same on every process, whatever batches
// it had (bins from p.bins, capacity bins always present).
void merge_parts(EvalResult& res, double& sum, double& uniq_sum, int64_t& uniq_count, const EvalParams& p) {
  std::vector<double> v = {sum, static_cast<double>(res.sequences), uniq_sum, static_cast<double>(uniq_count),
                           res.routing.load_cv, res.routing.drop_rate, res.routing.zero_expert_rate,
                           res.routing.mean_capacity, static_cast<double>(res.routing.forwards),
                           res.capacity_per_bin.empty() ? 0.0 : 1.0};
  auto pack = [&](const std::vector<BinnedLoss>& bins, size_t n) {
    for (int64_t i = 0; i < p.bins[n]; ++i) {
      const bool have = n < bins.size();
      v.push_back(have ? bins[n].mean(i) * static_cast<double>(bins[n].count(i)) : 0.0);
      v.push_back(have ? static_cast<double>(bins[n].count(i)) : 0.0);
    }
  };
  for (size_t n = 0; n < p.bins.size(); ++n) pack(res.per_bin, n), pack(res.capacity_per_bin, n);
  p.all_reduce(v);
  sum = v[0];
  res.sequences = std::llround(v[1]);
  uniq_sum = v[2];
  uniq_count = std::llround(v[3]);
  res.routing.load_cv = v[4];
  res.routing.drop_rate = v[5];
  res.routing.zero_expert_rate = v[6];
  res.routing.mean_capacity = v[7];
  res.routing.forwards = std::llround(v[8]);
  const bool capacity = v[9] > 0;
  res.per_bin.clear();
  res.capacity_per_bin.clear();
  // Rebuilt from (sum, count) per bin: count rows in the bin's middle, each with the mean.
  auto rebuild = [](int64_t nb, const double* sc) {
    BinnedLoss b(nb);
    for (int64_t i = 0; i < nb; ++i) {
      const auto c = std::llround(sc[2 * i + 1]);
      if (c > 0)
        b.add(torch::full({c}, (static_cast<float>(i) + 0.5f) / static_cast<float>(nb)),
              torch::full({c}, static_cast<float>(sc[2 * i] / static_cast<double>(c))));
    }
    return b;
  };
  size_t off = 10;
  for (auto nb : p.bins) {
    res.per_bin.push_back(rebuild(nb, &v[off]));
    off += 2 * static_cast<size_t>(nb);
    if (capacity) res.capacity_per_bin.push_back(rebuild(nb, &v[off]));
    off += 2 * static_cast<size_t>(nb);
  }
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
  res.mask_mode = p.mask_mode;
  res.block_length = p.block_length;
  const bool semi_ar = p.mask_mode == "semi-ar";
  if (!semi_ar && p.mask_mode != "uniform")
    fail("", "--eval-mask-mode", "unknown mode '" + p.mask_mode + "'", "use uniform or semi-ar");
  if (p.block_length < 1) fail("", "--diffusion-block-length", "must be >= 1", "the decoder's block length, e.g. 32");
  if (semi_ar && windows.seq_len() % p.block_length != 0)
    fail("", "--diffusion-block-length",
         std::to_string(p.block_length) + " does not divide the window length " + std::to_string(windows.seq_len()),
         "pick --eval-seq-len as a multiple of the block length");
  const int64_t blocks = windows.seq_len() / p.block_length;
  const int64_t mask_id = model->config().mask_token_id;
  const int64_t total = windows.size() * p.mask_samples;
  double sum = 0.0, uniq_sum = 0.0;
  int64_t done = 0, uniq_count = 0, batch_index = 0;
  if (p.parts < 1 || p.part < 0 || p.part >= p.parts || (p.parts > 1 && !p.all_reduce))
    throw std::invalid_argument("evaluate_elbo: part must be in [0, parts) and parts > 1 needs all_reduce");
  for (int64_t s = 0; s < p.mask_samples; ++s) {
    for (int64_t first = 0; first < windows.size(); first += p.batch_size) {
      // The same batches (and so the same numbers) as one process; this process's share only.
      if (batch_index++ % p.parts != p.part) continue;
      const int64_t count = std::min(p.batch_size, windows.size() - first);
      auto x0 = windows.batch(first, count);
      torch::Tensor input_r_B;
      auto noised = semi_ar ? noise_rows_semi_ar(x0, mask_id, p.seed, first, s, p.block_length, &input_r_B)
                            : noise_rows(x0, mask_id, p.seed, first, s);
      ForwardOptions opt;
      opt.mask_ratio_B = semi_ar ? input_r_B : noised.r_B;
      opt.skip_lm_head = true;
      if (p.routing.policy != moe::RoutingPolicy::kToken) opt.routing = &p.routing;
      DiffusionLoss dl;
      {
        compat::CpuAutocast ac(p.bf16);
        auto fwd = model->forward(noised.x_t_BL, opt);
        dl = diffusion_loss(model, fwd.hidden_BLD, x0, noised, /*inverse_r=*/true);
      }
      // Semi-ar scores one block of `blocks`: scale to the whole window's per-token NELBO.
      if (semi_ar) dl.seq_loss_B = dl.seq_loss_B * static_cast<double>(blocks);
      const auto& layers = model->last_routing_stats();
      res.routing.add(layers);
      uniq_sum += sum_unique_experts(model, count, windows.seq_len(), p.block_length, uniq_count);
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
  if (p.parts > 1) merge_parts(res, sum, uniq_sum, uniq_count, p);
  res.loss = res.sequences ? sum / static_cast<double>(res.sequences) : 0.0;
  res.ppl = std::exp(std::min(20.0, res.loss));
  res.routing = res.routing.averaged();
  res.unique_experts_per_block = uniq_count ? uniq_sum / static_cast<double>(uniq_count) : 0.0;
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (was_training) model->train();
  return res;
}

ClozeResult evaluate_cloze(MoeDlm& model, const data::EvalWindows& windows, int64_t span, const EvalParams& p,
                           int64_t positions) {
  const bool was_training = model->is_training();
  model->eval();
  torch::NoGradGuard ng;
  const int64_t L = windows.seq_len(), mask_id = model->config().mask_token_id;
  ClozeResult res;
  res.correct_per_window.assign(static_cast<size_t>(windows.size()), 0);
  for (int64_t pos = 0; pos < positions; ++pos) {
    const int64_t centre = (2 * pos + 1) * L / (2 * positions);
    const int64_t lo = std::clamp<int64_t>(centre - span / 2, 0, std::max<int64_t>(0, L - span));
    const int64_t n = std::min(span, L - lo);
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
      auto hit_B = (logits.narrow(1, lo, n).argmax(-1) == x0.narrow(1, lo, n)).sum(1).contiguous();
      const int64_t* h = hit_B.data_ptr<int64_t>();
      for (int64_t b = 0; b < count; ++b) res.correct_per_window[static_cast<size_t>(first + b)] += h[b];
      res.tokens += count * n;
    }
  }
  int64_t correct = 0;
  for (auto c : res.correct_per_window) correct += c;
  res.accuracy = res.tokens ? static_cast<double>(correct) / static_cast<double>(res.tokens) : 0.0;
  if (was_training) model->train();
  return res;
}

}  // namespace ecdlm
