#include "ecdlm/generate/decoder.h"

#include <ATen/CPUGeneratorImpl.h>

#include <chrono>
#include <limits>

#include "ecdlm/kernels/small_m.h"
#include "ecdlm/util/error.h"

namespace ecdlm::gen {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

void need(bool ok, const char* field, const std::string& problem, const std::string& fix) {
  if (!ok) fail("", field, problem, fix);
}

// Restores the module's training flag on scope exit.
class EvalScope {
 public:
  explicit EvalScope(MoeDlm& m) : m_(m), was_training_(m->is_training()) { m_->eval(); }
  ~EvalScope() {
    if (was_training_) m_->train();
  }

 private:
  MoeDlm& m_;
  bool was_training_;
};

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

Remasking parse_remasking(const std::string& name) {
  if (name == "low_confidence") return Remasking::kLowConfidence;
  if (name == "random") return Remasking::kRandom;
  if (name == "margin") return Remasking::kMargin;
  if (name == "entropy") return Remasking::kEntropy;
  fail("", "remasking", "unknown '" + name + "'", "use low_confidence, random, margin or entropy");
}

void validate_params(const DecodeParams& p) {
  need(p.gen_length > 0, "gen_length", "must be > 0, got " + std::to_string(p.gen_length), "");
  need(p.block_length > 0, "block_length", "must be > 0, got " + std::to_string(p.block_length),
       "");
  need(p.gen_length % p.block_length == 0, "gen_length",
       std::to_string(p.gen_length) + " is not a multiple of block_length " +
           std::to_string(p.block_length),
       "use a generation length that is a multiple of the block length");
  const int64_t num_blocks = p.gen_length / p.block_length;
  need(p.steps > 0 && p.steps % num_blocks == 0, "steps",
       std::to_string(p.steps) + " is not a positive multiple of the number of blocks " +
           std::to_string(num_blocks),
       "use steps = k * gen_length / block_length");
  need(p.temperature >= 0.0, "temperature", "must be >= 0", "");
  need(p.top_k >= 0, "top_k", "must be >= 0 (0 = off)", "");
  need(p.top_p > 0.0 && p.top_p <= 1.0, "top_p", "must be in (0, 1] (1 = off)", "");
  need(p.cfg_scale >= 0.0, "cfg_scale", "must be >= 0 (0 = off)", "");
  need(p.block_causal >= 0, "block_causal", "must be >= 0 (0 = bidirectional)", "");
  parse_remasking(p.remasking);
}

torch::Tensor filter_top_k_top_p(const torch::Tensor& logits_NV, int64_t top_k, double top_p) {
  auto out = logits_NV;
  const int64_t V = logits_NV.size(-1);
  if (top_k > 0 && top_k < V) {
    auto kth = std::get<0>(out.topk(top_k, -1)).narrow(-1, top_k - 1, 1);
    out = out.masked_fill(out < kth, kNegInf);
  }
  if (top_p < 1.0) {
    auto sorted = out.sort(-1, /*descending=*/true);
    auto cum = std::get<0>(sorted).softmax(-1).cumsum(-1);
    auto remove = cum > top_p;
    // Shift the marks right by one so the entry that crosses p (and the first) stays.
    remove = torch::cat({torch::zeros_like(remove.narrow(-1, 0, 1)), remove.narrow(-1, 0, V - 1)},
                        -1);
    auto remove_orig = torch::zeros_like(remove).scatter(-1, std::get<1>(sorted), remove);
    out = out.masked_fill(remove_orig, kNegInf);
  }
  return out;
}

Candidates sample_candidates(const torch::Tensor& logits_NV, double temperature, int64_t top_k,
                             double top_p, Remasking remasking, at::Generator& gen) {
  auto l = logits_NV.to(torch::kFloat32).contiguous();
  Candidates c;
  torch::Tensor kept;  // un-tempered logits on the filtered support (confidence distribution)
  if (temperature > 0.0) {
    auto filt = filter_top_k_top_p(l / temperature, top_k, top_p);
    auto z = filt.to(torch::kFloat64);
    auto u = torch::rand(z.sizes(), gen, torch::TensorOptions().dtype(torch::kFloat64));
    c.token_N = (z - torch::log(-torch::log(u))).argmax(-1);
    kept = (top_k > 0 || top_p < 1.0) ? l.masked_fill(torch::isneginf(filt), kNegInf) : l;
  } else {
    kept = filter_top_k_top_p(l, top_k, top_p);
    c.token_N = kept.argmax(-1);
  }
  if (remasking == Remasking::kRandom) {
    c.conf_N = torch::rand({l.size(0)}, gen, torch::TensorOptions().dtype(torch::kFloat64));
    return c;
  }
  auto p_NV = kept.softmax(-1);
  switch (remasking) {
    case Remasking::kLowConfidence:
      c.conf_N = p_NV.gather(-1, c.token_N.unsqueeze(-1)).squeeze(-1);
      break;
    case Remasking::kMargin: {
      auto top2 = std::get<0>(p_NV.topk(std::min<int64_t>(2, p_NV.size(-1)), -1));
      c.conf_N = top2.size(-1) > 1 ? top2.select(-1, 0) - top2.select(-1, 1) : top2.select(-1, 0);
      break;
    }
    default:  // entropy: higher = more certain; xlogy makes 0 * log 0 = 0 on filtered entries
      c.conf_N = torch::xlogy(p_NV, p_NV).sum(-1);
      break;
  }
  c.conf_N = c.conf_N.to(torch::kFloat64);
  return c;
}

std::vector<int64_t> transfer_schedule(int64_t n, int64_t steps) {
  std::vector<int64_t> s(static_cast<size_t>(steps), n / steps);
  for (int64_t i = 0; i < n % steps; ++i) s[static_cast<size_t>(i)] += 1;
  return s;
}

torch::Tensor select_top_n(const torch::Tensor& conf_BL, int64_t n) {
  const int64_t L = conf_BL.size(1);
  n = std::min(n, L);
  auto sel = torch::zeros(conf_BL.sizes(), torch::kBool);
  if (n <= 0) return sel;
  // Stable descending sort: equal confidences keep index order, so ties go to the lower index.
  auto sorted = torch::sort(conf_BL, /*stable=*/true, /*dim=*/1, /*descending=*/true);
  auto keep = std::get<0>(sorted).narrow(1, 0, n) > kNegInf;
  return sel.scatter(1, std::get<1>(sorted).narrow(1, 0, n), keep);
}

DecodeResult llada_generate(MoeDlm& model, const torch::Tensor& prompt_BP, const DecodeParams& p,
                            const StepCallback& cb) {
  validate_params(p);
  const auto& cfg = model->config();
  if ((p.mask_id >= 0 ? p.mask_id : cfg.mask_token_id) < 0)
    fail("config.json", "mask_token_id", "the model has no mask token id",
         "set mask_token_id in the model's config.json");
  if (p.routing.policy != moe::RoutingPolicy::kToken) p.routing.validate(moe_config_from(cfg));
  need(prompt_BP.dim() == 2 && prompt_BP.scalar_type() == torch::kInt64, "prompt",
       "must be an int64 tensor [B, P] (rows of equal length)", "");
  need(prompt_BP.size(0) > 0, "prompt", "batch is empty", "");
  if (prompt_BP.numel() > 0)
    need(prompt_BP.min().item<int64_t>() >= 0 && prompt_BP.max().item<int64_t>() < cfg.vocab_size,
         "prompt", "token id outside [0, vocab_size=" + std::to_string(cfg.vocab_size) + ")", "");
  const auto remasking = parse_remasking(p.remasking);
  const int64_t mask = p.mask_id >= 0 ? p.mask_id : cfg.mask_token_id, eos = cfg.eos_token_id;
  const int64_t B = prompt_BP.size(0), P = prompt_BP.size(1), G = p.gen_length, Lb = p.block_length;
  const int64_t num_blocks = G / Lb, steps_per_block = p.steps / num_blocks;

  torch::NoGradGuard no_grad;
  kernels::F32TilesScope f32_tiles;  // f32 products on the AVX-512 tiles while decoding
  EvalScope eval_scope(model);
  at::Generator gen = at::detail::createCPUGenerator(p.seed);
  const auto t_start = std::chrono::steady_clock::now();

  auto x_BL = torch::full({B, P + G}, mask, torch::kInt64);
  x_BL.narrow(1, 0, P).copy_(prompt_BP);
  // Every block is all MASK when it starts (earlier blocks only commit inside themselves).
  const auto schedule = transfer_schedule(Lb, steps_per_block);
  const auto mask_index = torch::tensor({mask}, torch::kInt64);

  DecodeResult res;
  int64_t step = 0;
  const int64_t total_steps = num_blocks * steps_per_block;
  for (int64_t b = 0; b < num_blocks && !res.cancelled; ++b) {
    const int64_t s0 = P + b * Lb;
    for (int64_t s = 0; s < steps_per_block; ++s, ++step) {
      const int64_t n = schedule[static_cast<size_t>(s)];
      double fwd_ms = 0.0;
      int64_t committed = 0;
      if (n > 0) {  // steps_per_block > block_length leaves empty steps: no forward needed
        auto ids = x_BL;
        if (p.cfg_scale > 0.0) {
          auto un = x_BL.clone();
          un.narrow(1, 0, P).fill_(mask);
          ids = torch::cat({x_BL, un}, 0);
        }
        ForwardOptions opt;
        opt.block_length = p.block_causal;
        if (p.routing.policy != moe::RoutingPolicy::kToken) opt.routing = &p.routing;
        opt.mask_ratio_B = (ids == mask).to(torch::kFloat32).mean(1);
        const auto t0 = std::chrono::steady_clock::now();
        auto logits = model->forward(ids, opt).logits_BLV.narrow(1, s0, Lb);
        fwd_ms = ms_since(t0);
        res.forward_ms.push_back(fwd_ms);
        ++res.forwards;
        if (p.cfg_scale > 0.0) {
          auto cond = logits.narrow(0, 0, B), un = logits.narrow(0, B, B);
          logits = un + (p.cfg_scale + 1.0) * (cond - un);
        }
        const int64_t V = logits.size(-1);
        // MASK is never a valid output: without this a committed MASK would stay undecoded.
        auto logits_NV = logits.reshape({B * Lb, V}).clone().index_fill_(-1, mask_index, kNegInf);
        auto cand = sample_candidates(logits_NV, p.temperature, p.top_k, p.top_p, remasking, gen);
        auto xb_BLb = x_BL.narrow(1, s0, Lb);
        auto conf_BLb = cand.conf_N.view({B, Lb}).masked_fill(xb_BLb != mask, kNegInf);
        auto sel_BLb = select_top_n(conf_BLb, n);
        xb_BLb.copy_(torch::where(sel_BLb, cand.token_N.view({B, Lb}), xb_BLb));
        committed = sel_BLb.sum(1).max().item<int64_t>();
      }
      if (cb && !cb(StepInfo{step, total_steps, b, &x_BL, fwd_ms, committed})) {
        res.cancelled = true;
        break;
      }
    }
    // Committed tokens are final, so once every row holds an EOS nothing before it can change.
    if (p.stop_at_eos && eos >= 0 && !res.cancelled &&
        (x_BL.narrow(1, P, (b + 1) * Lb) == eos).any(1).all().item<bool>())
      break;
  }

  res.tokens_BG = x_BL.narrow(1, P, G).clone();
  res.lengths.assign(static_cast<size_t>(B), G);
  if (eos >= 0) {
    auto acc = res.tokens_BG.accessor<int64_t, 2>();
    for (int64_t r = 0; r < B; ++r) {
      int64_t first = G;
      for (int64_t j = 0; j < G; ++j)
        if (acc[r][j] == eos) {
          first = j;
          break;
        }
      res.lengths[static_cast<size_t>(r)] = first;
      if (p.stop_at_eos && !res.cancelled)
        for (int64_t j = first; j < G; ++j) acc[r][j] = eos;
    }
  }
  res.seconds = ms_since(t_start) / 1000.0;
  return res;
}

}  // namespace ecdlm::gen
