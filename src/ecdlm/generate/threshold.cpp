#include "ecdlm/generate/threshold.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include "ecdlm/kernels/head.h"
#include "ecdlm/kernels/small_m.h"
#include "ecdlm/kernels/softmax.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/profile.h"

namespace ecdlm::gen {
namespace idx = torch::indexing;
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

void need(bool ok, const std::string& field, const std::string& problem, const std::string& fix) {
  if (!ok) fail("", field, problem, fix);
}

}  // namespace

ExpertStats last_forward_expert_stats(MoeDlm& model, int64_t B, int64_t L_in, int64_t row0, int64_t n) {
  ExpertStats st{torch::zeros({B}, torch::kFloat64), torch::zeros({B}, torch::kFloat64)};
  int64_t layers = 0;
  for (auto& blk : model->moe_blocks()) {
    const auto& plan = blk->last_plan();
    if (!plan.idx_TK.defined() && !plan.token_EN.defined()) continue;
    const auto u_B = moe::unique_experts_B(plan, B, L_in, row0, n);
    const auto& ex = blk->experts;
    const double per_expert = static_cast<double>(ex->bytes_per_expert());
    st.unique_B += u_B;
    st.bytes_B += u_B * per_expert;
    ++layers;
  }
  if (layers) st.unique_B /= static_cast<double>(layers);
  return st;
}

ForwardOptions block_step_options(int64_t L, const moe::InferenceRouting* routing, KvCache* kv, bool kv_append) {
  ForwardOptions o;
  o.block_length = L;
  o.routing = routing;
  o.skip_lm_head = true;
  o.kv_cache = kv;
  o.kv_append = kv_append;
  return o;
}

bool kv_rides_along(const ThresholdParams& p, const ModelConfig& cfg) {
  return p.kv_cache && cfg.router_type != RouterType::kExpertChoice;
}

torch::Tensor head_logits(MoeDlm& model, const torch::Tensor& hidden_ND) {
  prof::Scope ps(prof::kHead);
  // The head streams its whole [V, D] matrix for the block's few still-masked rows: the small-M
  // kernel's case (f32 logits, no bf16 rounding).
  const auto& w_VD = model->lm_head->weight;
  if (!model->lm_head->quantized() && kernels::small_m_applies(hidden_ND, w_VD)) return kernels::small_m_linear(hidden_ND, w_VD);
  // More rows (a batch's masked positions): the same tiles where they run at any M (AVX512), so a
  // row's logits do not depend on the batch and stay f32 (torch's linear rounds them to bf16).
  if (!model->lm_head->quantized() && kernels::head_linear_applies(hidden_ND, w_VD)) return kernels::head_linear(hidden_ND, w_VD);
  return to_f32_or_wider(model->lm_head(hidden_ND));
}

Candidates block_candidates(const torch::Tensor& logits_NV, const torch::Tensor& rows_N, int64_t L,
                            const ThresholdParams& p, at::Generator& gen) {
  auto c = sample_threshold(logits_NV, p.temperature, p.top_k, p.top_p, p.confidence, gen);
  Candidates out;
  out.conf_N = torch::full({L}, kNegInf, torch::kFloat64).index_put_({rows_N}, c.conf_N);
  out.token_N = torch::zeros({L}, torch::kInt64).index_put_({rows_N}, c.token_N);
  return out;
}

ThresholdRule parse_threshold_rule(const std::string& name) {
  if (name == "llada2") return ThresholdRule::kLlada2;
  if (name == "fast-threshold") return ThresholdRule::kFastThreshold;
  if (name == "fast-factor") return ThresholdRule::kFastFactor;
  fail("", "--diffusion-rule", "unknown rule '" + name + "'", "use llada2, fast-threshold or fast-factor");
}

Confidence parse_confidence(const std::string& name) {
  if (name == "prob") return Confidence::kProb;
  if (name == "margin") return Confidence::kMargin;
  if (name == "entropy") return Confidence::kNegEntropy;
  if (name == "random") return Confidence::kRandom;
  fail("", "--diffusion-confidence", "unknown confidence '" + name + "'", "use prob, margin, entropy or random");
}

std::vector<int64_t> output_stop_ids(const ThresholdParams& p, const ModelConfig& c) {
  const int64_t eos = p.eos_id >= 0 ? p.eos_id : p.eos_id == -1 ? c.eos_token_id : -1;
  std::vector<int64_t> stops;
  if (eos >= 0) stops.push_back(eos);
  if (p.eos_id != -2)
    for (auto id : p.stop_ids)
      if (std::find(stops.begin(), stops.end(), id) == stops.end()) stops.push_back(id);
  return stops;
}

void validate_params(const ThresholdParams& p, const ModelConfig& c, int64_t prompt_len) {
  need(p.gen_length > 0, "--gen-length", "must be > 0", "e.g. -n 256");
  need(p.block_length > 0, "--diffusion-block-length", "must be > 0", "LLaDA2 uses 32");
  need(p.steps > 0, "--diffusion-steps", "must be > 0", "LLaDA2 uses 32 (= block length)");
  need(p.minimal_topk >= 1, "--diffusion-minimal-topk", "must be >= 1", "");
  need(p.rule == ThresholdRule::kFastFactor || (p.threshold >= 0.0 && p.threshold <= 1.0), "--diffusion-threshold",
       "must be in [0, 1], got " + std::to_string(p.threshold), "LLaDA2 recommends 0.95");
  need(p.rule != ThresholdRule::kFastFactor || (p.factor > 0.0 && std::isfinite(p.factor)), "--diffusion-factor",
       "must be a finite number > 0", "e.g. 1.0");
  need(p.temperature >= 0.0 && std::isfinite(p.temperature), "--temperature", "must be a finite number >= 0",
       "0 = greedy");
  need(p.top_k >= 0, "--top-k", "must be >= 0", "0 = off");
  need(p.top_p > 0.0 && p.top_p <= 1.0, "--top-p", "must be in (0, 1]", "1 = off");
  const int64_t mask = p.mask_id >= 0 ? p.mask_id : c.mask_token_id;
  if (mask < 0 || mask >= c.vocab_size)
    fail("config.json", "mask_token_id", "the model has no valid mask token id",
         "set mask_token_id in config.json or pass --mask-id");
  need(p.eos_id < c.vocab_size, "--eos-id", "outside the vocabulary", "");
  for (auto id : p.stop_ids)
    need(id >= 0 && id < c.vocab_size, "stop ids", "id " + std::to_string(id) + " outside the vocabulary",
         "check eos_token_id / pad_token_id in config.json and generation_config.json");
  const int64_t total = (prompt_len + p.gen_length + p.block_length - 1) / p.block_length * p.block_length;
  if (c.max_position_embeddings > 0 && total > c.max_position_embeddings)
    fail("", "--gen-length", "prompt (" + std::to_string(prompt_len) + " tokens) + generation (" +
                                 std::to_string(p.gen_length) + "), rounded up to whole blocks (" + std::to_string(total) +
                                 "), exceeds the model's context of " + std::to_string(c.max_position_embeddings),
         "shorten the prompt or lower --gen-length");
  if (p.routing.uses_coreset() && p.kv_cache && p.block_length % p.routing.coreset_chunk() != 0) {
    const std::string flag = p.routing.policy == moe::RoutingPolicy::kBlock ? "--block-chunk" : "--moe-des-chunk";
    fail("", "--diffusion-block-length",
         "block length " + std::to_string(p.block_length) + " is not a multiple of " + flag + " " +
             std::to_string(p.routing.coreset_chunk()) + " (with the KV cache each step forwards one block, cut into chunks)",
         "use " + flag + " " + std::to_string(p.block_length) + " or a block length that is a multiple of it");
  }
  p.routing.validate(moe_config_from(c));
}

torch::Tensor sample_rows(const torch::Tensor& probs_NV, at::Generator& gen) {
  const auto p_NV = probs_NV.to(torch::kFloat32).contiguous();
  const int64_t N = p_NV.size(0), V = p_NV.size(1);
  const auto u_N = torch::rand({N}, gen, torch::kFloat64);
  const auto total_N = p_NV.sum(1, /*keepdim=*/false, torch::kFloat64);
  auto token_N = torch::empty({N}, torch::kInt64);
  const float* p = p_NV.data_ptr<float>();
  const double* u = u_N.data_ptr<double>();
  const double* total = total_N.data_ptr<double>();
  int64_t* out = token_N.data_ptr<int64_t>();
  for (int64_t n = 0; n < N; ++n) {
    const float* row = p + n * V;
    const double target = u[n] * total[n];
    double cum = 0.0;
    int64_t pick = -1, last = 0;
    for (int64_t v = 0; v < V; ++v) {
      if (!(row[v] > 0.0F)) continue;  // filtered entries are never drawn
      last = v;
      cum += row[v];
      if (cum > target) {
        pick = v;
        break;
      }
    }
    out[n] = pick >= 0 ? pick : last;  // rounding left the target past the end: the last live entry
  }
  return token_N;
}

Candidates sample_threshold(const torch::Tensor& logits_LV, double temperature, int64_t top_k, double top_p,
                            Confidence c, at::Generator& gen) {
  auto l = logits_LV.to(torch::kFloat32);
  if (temperature <= 0 && top_k == 0 && top_p >= 1.0 && c == Confidence::kProb && kernels::greedy_prob_applies(l)) {
    // Greedy with the picked token's probability: one pass per row, no [L, V] softmax (decoders only).
    Candidates out;
    kernels::greedy_prob(l, out.token_N, out.conf_N);
    return out;
  }
  if (temperature > 0 && temperature != 1.0) l = l / temperature;
  l = filter_top_k_top_p(l, top_k, top_p);
  auto probs_LV = torch::softmax(l, -1);
  Candidates out;
  if (temperature > 0) {
    out.token_N = sample_rows(probs_LV, gen);
  } else {
    out.token_N = probs_LV.argmax(-1);
  }
  switch (c) {
    case Confidence::kProb:
      out.conf_N = probs_LV.gather(1, out.token_N.unsqueeze(1)).squeeze(1).to(torch::kFloat64);
      break;
    case Confidence::kMargin: {
      auto top2 = std::get<0>(probs_LV.topk(std::min<int64_t>(2, probs_LV.size(1)), -1));
      out.conf_N = (top2.select(1, 0) - (top2.size(1) > 1 ? top2.select(1, 1) : torch::zeros_like(top2.select(1, 0))))
                       .to(torch::kFloat64);
      break;
    }
    case Confidence::kNegEntropy: {
      auto p64 = probs_LV.to(torch::kFloat64);
      out.conf_N = (p64 * torch::log(p64.clamp_min(1e-300))).sum(-1);
      break;
    }
    case Confidence::kRandom:
      out.conf_N = torch::rand({probs_LV.size(0)}, gen, torch::kFloat64);
      break;
  }
  return out;
}

torch::Tensor threshold_commit(const torch::Tensor& conf_L, ThresholdRule rule, double threshold, double factor,
                               int64_t n) {
  const int64_t L = conf_L.size(0);
  const auto cand = conf_L > kNegInf;
  const int64_t n_cand = cand.sum().item<int64_t>();
  auto top = [&](int64_t m) { return select_top_n(conf_L.view({1, L}), std::min(m, n_cand)).view({L}); };
  switch (rule) {
    case ThresholdRule::kLlada2: {
      auto high = cand.logical_and(conf_L > threshold);
      return high.sum().item<int64_t>() >= n ? high : top(n);
    }
    case ThresholdRule::kFastThreshold:
      return top(1).logical_or(cand.logical_and(conf_L >= threshold));
    case ThresholdRule::kFastFactor: {
      auto sorted = std::get<0>(torch::sort(conf_L, /*stable=*/true, 0, /*descending=*/true));
      const double* c = sorted.contiguous().data_ptr<double>();
      int64_t m = n_cand;
      for (int64_t k = 0; k < n_cand; ++k) {
        const double t = k == 0 ? -1.0 : 1.0 - factor / static_cast<double>(k + 2);
        if (c[k] < t) {
          m = k;
          break;
        }
      }
      if (m == 0 || m == n_cand - 1) m += 1;  // Fast-dLLM's quirk, kept for parity
      return top(m);
    }
  }
  return top(1);
}

ThresholdResult threshold_generate(MoeDlm& model, const std::vector<int64_t>& prompt, const ThresholdParams& p,
                                   const StepCallback& cb) {
  const auto& cfg = model->config();
  validate_params(p, cfg, static_cast<int64_t>(prompt.size()));
  for (auto t : prompt)
    need(t >= 0 && t < cfg.vocab_size, "prompt", "token id " + std::to_string(t) + " outside the vocabulary", "");
  const bool was_training = model->is_training();
  model->eval();
  torch::NoGradGuard ng;
  kernels::F32TilesScope f32_tiles;  // f32 products on the AVX-512 tiles while decoding
  const auto t0 = std::chrono::steady_clock::now();
  at::Generator gen = at::detail::createCPUGenerator(p.seed);

  const int64_t L = p.block_length, P = static_cast<int64_t>(prompt.size());
  const int64_t mask = p.mask_id >= 0 ? p.mask_id : cfg.mask_token_id;
  // Every id that ends the output (EOS and the extra stop ids) acts the same way.
  const std::vector<int64_t> stops = output_stop_ids(p, cfg);
  const auto stops_S = torch::tensor(stops, torch::kInt64);
  auto is_stop = [&](const torch::Tensor& t) { return torch::isin(t, stops_S); };
  const int64_t steps = std::max<int64_t>(1, std::min(p.steps, p.gen_length / p.minimal_topk));
  const int64_t NB = (P + p.gen_length + L - 1) / L, total = NB * L;
  auto x = torch::full({1, total}, mask, torch::kInt64);
  if (P > 0) x.narrow(1, 0, P).copy_(torch::tensor(prompt, torch::kInt64).view({1, P}));
  const auto schedule = transfer_schedule(L, steps);
  const moe::InferenceRouting* routing = p.routing.policy == moe::RoutingPolicy::kToken ? nullptr : &p.routing;

  ThresholdResult res;
  KvCache kv;
  const int64_t first_block = P / L;
  auto cache_forward = [&](int64_t from, int64_t len) {
    model->forward(x.narrow(1, from, len), block_step_options(L, routing, &kv, /*kv_append=*/true));
    ++res.cache_forwards;
  };
  if (p.kv_cache && first_block > 0) cache_forward(0, first_block * L);
  const bool ride_along = kv_rides_along(p, cfg);  // one forward fewer per block
  bool pending = false;  // block lo - L is final but not yet in the cache

  int64_t step_global = 0;
  int64_t cut = -1;  // absolute index of the EOS that ends the output (inclusive), -1 = none
  for (int64_t b = first_block; b < NB && cut < 0 && !res.cancelled; ++b) {
    const int64_t lo = b * L;
    const int64_t max_steps = p.rule == ThresholdRule::kLlada2 ? steps : L;
    for (int64_t s = 0; s < max_steps; ++s) {
      auto block_x = x.narrow(1, lo, L);
      auto masked_L = (block_x[0] == mask);
      if (!masked_L.any().item<bool>()) break;
      const auto tf = std::chrono::steady_clock::now();
      const auto prof0 = prof::totals_ms();
      auto o = block_step_options(L, routing);
      torch::Tensor hidden_LD;
      int64_t L_in;
      if (p.kv_cache && pending) {
        o.kv_cache = &kv;
        o.kv_append = true;
        o.kv_append_n = L;
        L_in = 2 * L;
        hidden_LD = model->forward(x.narrow(1, lo - L, 2 * L), o).hidden_BLD[0].narrow(0, L, L);
        pending = false;
        ++res.ride_along_appends;
      } else if (p.kv_cache) {
        o.kv_cache = &kv;
        L_in = L;
        hidden_LD = model->forward(block_x, o).hidden_BLD[0];
      } else {
        L_in = lo + L;
        hidden_LD = model->forward(x.narrow(1, 0, lo + L), o).hidden_BLD[0].narrow(0, lo, L);
      }
      const auto rows_N = masked_L.nonzero().squeeze(1);
      const auto logits_NV = head_logits(model, hidden_LD.index_select(0, rows_N));
      ForwardStat st;
      const auto prof1 = prof::totals_ms();
      st.attention_ms = prof1[prof::kAttention] - prof0[prof::kAttention];
      st.router_ms = prof1[prof::kRouter] - prof0[prof::kRouter];
      st.experts_ms = prof1[prof::kExperts] - prof0[prof::kExperts] + prof1[prof::kShared] - prof0[prof::kShared];
      st.dense_ms = prof1[prof::kDense] - prof0[prof::kDense];
      st.head_ms = prof1[prof::kHead] - prof0[prof::kHead];
      st.block = b;
      st.step = s;
      st.tokens_in = L_in;
      const auto es = last_forward_expert_stats(model, 1, L_in, L_in - L, L);
      st.unique_experts_per_layer = es.unique_B[0].item<double>();
      st.expert_bytes = es.bytes_B[0].item<double>();
      auto cand = block_candidates(logits_NV, rows_N, L, p, gen);
      const auto& conf_L = cand.conf_N;
      const int64_t n = p.rule == ThresholdRule::kLlada2 ? schedule[static_cast<size_t>(s)] : 1;
      auto commit_L = threshold_commit(conf_L, p.rule, p.threshold, p.factor, n).logical_and(masked_L);
      block_x[0].copy_(torch::where(commit_L, cand.token_N, block_x[0]));
      st.committed = commit_L.sum().item<int64_t>();
      st.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - tf).count();
      res.per_forward.push_back(st);
      ++res.forwards;
      if (cb) {
        StepInfo info{step_global, NB * steps, b, &x, st.ms, st.committed};
        if (!cb(info)) {
          res.cancelled = true;
          break;
        }
      }
      ++step_global;
      if (p.eos_early_stop && !stops.empty() && commit_L.logical_and(is_stop(cand.token_N)).any().item<bool>()) {
        // The first EOS after the prompt ends the output if nothing before it is still masked.
        auto gen_part = x[0].narrow(0, P, total - P);
        const int64_t e = is_stop(gen_part).nonzero().min().item<int64_t>();
        if (!(gen_part.narrow(0, 0, e) == mask).any().item<bool>()) {
          cut = P + e;
          res.eos_stopped = true;
          break;
        }
      }
    }
    if (cut >= 0 || res.cancelled) break;
    // A block with EOS after the prompt ends generation.
    if (!stops.empty() && is_stop(x[0].narrow(0, P, lo + L - P)).any().item<bool>()) break;
    if (pending) {  // this block had nothing to decode: the previous one goes in on its own
      cache_forward(lo - L, L);
      pending = false;
    }
    if (p.kv_cache && b + 1 < NB) {
      if (ride_along)
        pending = true;
      else
        cache_forward(lo, L);
    }
  }
  auto out = x[0].narrow(0, P, std::min(p.gen_length, total - P));
  std::vector<int64_t> toks(out.data_ptr<int64_t>(), out.data_ptr<int64_t>() + out.numel());
  if (cut >= 0) toks.resize(static_cast<size_t>(std::min<int64_t>(cut - P + 1, static_cast<int64_t>(toks.size()))));
  const auto first_stop = std::find_first_of(toks.begin(), toks.end(), stops.begin(), stops.end());
  if (first_stop != toks.end()) toks.erase(first_stop + 1, toks.end());
  res.tokens = std::move(toks);
  double u = 0.0;
  for (const auto& f : res.per_forward) u += f.unique_experts_per_layer;
  res.avg_unique_experts_per_layer = res.per_forward.empty() ? 0.0 : u / static_cast<double>(res.per_forward.size());
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (was_training) model->train();
  return res;
}

}  // namespace ecdlm::gen
