#include "ecdlm/generate/continuous.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <chrono>
#include <map>

#include "ecdlm/generate/segment_forward.h"
#include "ecdlm/kernels/small_m.h"
#include "ecdlm/util/error.h"

namespace ecdlm::gen {
namespace {

using Clock = std::chrono::steady_clock;

// The same forward-wide routing: the policy and the parameters it uses.
bool same_routing(const moe::InferenceRouting& a, const moe::InferenceRouting& b) {
  using moe::RoutingPolicy;
  if (a.policy != b.policy) return false;
  switch (a.policy) {
    case RoutingPolicy::kBlock:
      return a.block_top_p == b.block_top_p && a.block_min_experts == b.block_min_experts && a.block_chunk == b.block_chunk;
    case RoutingPolicy::kTopK:
      return a.topk_cap == b.topk_cap;
    case RoutingPolicy::kDesS:
    case RoutingPolicy::kDesV:
      return a.des_s_ratio == b.des_s_ratio && a.des_v_threshold == b.des_v_threshold &&
             a.des_min_experts == b.des_min_experts && a.des_chunk == b.des_chunk;
    default:
      return true;
  }
}

std::vector<int64_t> to_vec(const torch::Tensor& t) {
  auto c = t.contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

}  // namespace

struct ContinuousBatcher::Row {
  int64_t id = 0;
  ThresholdParams p;
  int64_t P = 0, NB = 0, total = 0, mask = 0, steps = 0, max_steps = 0;
  std::vector<int64_t> schedule, stops;
  torch::Tensor stops_S, x_T;  // stop ids; the canvas [total]: prompt, then generated positions
  at::Generator gen;
  KvCache kv;
  int64_t b = 0, s = 0;       // current block, step inside it
  int64_t cut = -1;           // absolute index of the stop id that ends the output (inclusive)
  size_t emitted = 0;         // output tokens reported as final so far
  bool cancelled = false;
  ThresholdResult res;
  Clock::time_point t0;

  bool is_stop_any(const torch::Tensor& t) const { return !stops.empty() && torch::isin(t, stops_S).any().item<bool>(); }
  // The output as threshold_generate cuts it (valid once the row ends).
  std::vector<int64_t> output() const {
    auto toks = to_vec(x_T.narrow(0, P, std::min(p.gen_length, total - P)));
    if (cut >= 0) toks.resize(static_cast<size_t>(std::min<int64_t>(cut - P + 1, static_cast<int64_t>(toks.size()))));
    const auto first = std::find_first_of(toks.begin(), toks.end(), stops.begin(), stops.end());
    if (first != toks.end()) toks.erase(first + 1, toks.end());
    return toks;
  }
};

ContinuousBatcher::ContinuousBatcher(MoeDlm& model, const BatcherParams& bp) : model_(model), bp_(bp) {
  if (bp_.block_length <= 0) fail("", "--diffusion-block-length", "must be > 0", "LLaDA2 uses 32");
  bp_.routing.validate(moe_config_from(model_->config()));
  model_->eval();
}

ContinuousBatcher::~ContinuousBatcher() = default;

bool ContinuousBatcher::compatible(const ThresholdParams& p) const {
  return p.block_length == bp_.block_length && same_routing(p.routing, bp_.routing);
}

int64_t ContinuousBatcher::rows() const { return static_cast<int64_t>(rows_.size()); }

int64_t ContinuousBatcher::kv_bytes() const {
  int64_t n = 0;
  for (const auto& r : rows_) n += r->kv.bytes();
  return n;
}

int64_t ContinuousBatcher::add(const std::vector<int64_t>& prompt, const ThresholdParams& p) {
  const auto& cfg = model_->config();
  if (!p.kv_cache) fail("", "--kv-cache", "continuous batching always uses the KV cache", "drop --kv-cache false");
  if (p.block_length != bp_.block_length)
    fail("", "block_length", "the batch decodes blocks of " + std::to_string(bp_.block_length) + ", not " +
                                 std::to_string(p.block_length), "use the server's block length");
  if (!same_routing(p.routing, bp_.routing))
    fail("", "moe_routing", "the batch runs one MoE routing setting", "use the server's routing settings");
  validate_params(p, cfg, static_cast<int64_t>(prompt.size()));
  for (auto t : prompt)
    if (t < 0 || t >= cfg.vocab_size) fail("", "prompt", "token id " + std::to_string(t) + " outside the vocabulary", "");
  auto r = std::make_unique<Row>();
  r->id = next_id_++;
  r->p = p;
  r->t0 = Clock::now();
  const int64_t L = bp_.block_length;
  r->P = static_cast<int64_t>(prompt.size());
  r->NB = (r->P + p.gen_length + L - 1) / L;
  r->total = r->NB * L;
  r->mask = p.mask_id >= 0 ? p.mask_id : cfg.mask_token_id;
  r->steps = std::max<int64_t>(1, std::min(p.steps, p.gen_length / p.minimal_topk));
  r->max_steps = p.rule == ThresholdRule::kLlada2 ? r->steps : L;
  r->schedule = transfer_schedule(L, r->steps);
  r->stops = output_stop_ids(p, cfg);
  r->stops_S = torch::tensor(r->stops, torch::kInt64);
  r->x_T = torch::full({r->total}, r->mask, torch::kInt64);
  if (r->P > 0) r->x_T.narrow(0, 0, r->P).copy_(torch::tensor(prompt, torch::kInt64));
  r->gen = at::detail::createCPUGenerator(p.seed);
  r->b = r->P / L;
  rows_.push_back(std::move(r));
  return rows_.back()->id;
}

void ContinuousBatcher::cancel(int64_t id) {
  for (auto& r : rows_)
    if (r->id == id) r->cancelled = true;
}

std::vector<RowEvent> ContinuousBatcher::step(StepStats* stats) {
  torch::NoGradGuard ng;
  kernels::F32TilesScope f32_tiles;  // f32 products on the AVX-512 tiles while decoding
  const int64_t L = bp_.block_length;
  const moe::InferenceRouting* routing = bp_.routing.policy == moe::RoutingPolicy::kToken ? nullptr : &bp_.routing;
  const auto t_step = Clock::now();
  StepStats st;
  std::vector<RowEvent> events;
  auto finish = [&](Row& r, RowEvent& ev) {
    if (!r.cancelled) r.res.tokens = r.output();
    double u = 0.0;
    for (const auto& f : r.res.per_forward) u += f.unique_experts_per_layer;
    r.res.avg_unique_experts_per_layer = r.res.per_forward.empty() ? 0.0 : u / static_cast<double>(r.res.per_forward.size());
    r.res.seconds = std::chrono::duration<double>(Clock::now() - r.t0).count();
    if (!r.cancelled && r.res.tokens.size() > r.emitted)
      ev.final_tokens.assign(r.res.tokens.begin() + static_cast<int64_t>(r.emitted), r.res.tokens.end());
    ev.finished = true;
    ev.result = std::move(r.res);  // the row leaves at the end of this step
  };

  // Cancelled rows leave first: their caches go with them.
  std::vector<Row*> work;
  for (auto& up : rows_) {
    Row& r = *up;
    if (r.cancelled) {
      RowEvent ev;
      ev.id = r.id;
      ev.block = r.b;
      r.res.cancelled = true;
      auto out = r.output();  // unfinished: the final prefix is what was reported
      out.resize(std::min(r.emitted, out.size()));
      r.res.tokens = std::move(out);
      finish(r, ev);
      events.push_back(std::move(ev));
    } else {
      work.push_back(&r);
    }
  }
  const bool mixed_ok = segments_may_differ(model_->config());
  const bool pooled = moe_capacity_depends_on_input(model_->config());
  std::vector<Segment> segs;
  if (!work.empty()) {
    // Blocks the cache lacks go in first, in forwards of their own (per length), where the MoE
    // depends on the input's size: expert choice (all of them, as threshold_generate appends
    // finished blocks alone), a capacity factor (the prompt's prefill, as threshold_generate's).
    if (!mixed_ok || pooled) {
      std::map<int64_t, std::vector<Row*>> by_len;
      for (auto* r : work)
        if (r->kv.length() < r->b * L && (!mixed_ok || r->res.forwards == 0))
          by_len[r->b * L - r->kv.length()].push_back(r);
      for (auto& [len, rs] : by_len) {
        std::vector<Segment> cs;
        for (auto* r : rs) cs.push_back(Segment{r->x_T.narrow(0, r->kv.length(), len), &r->kv, len, 0});
        forward_segments(model_, cs, L, routing);
        for (auto* r : rs) ++r->res.cache_forwards;
        ++st.forwards;
        st.tokens_in += len * static_cast<int64_t>(rs.size());
      }
    }
    for (auto* r : work) {
      const int64_t lo = r->b * L, from = r->kv.length();
      segs.push_back(Segment{r->x_T.narrow(0, from, lo + L - from), &r->kv, lo - from, L});
      if (lo > from) {
        if (r->res.forwards == 0) ++r->res.cache_forwards;  // the prompt's blocks: threshold_generate's prefill
        else ++r->res.ride_along_appends;
      }
    }
    const auto tf = Clock::now();
    const auto fr = forward_segments(model_, segs, L, routing);
    ++st.forwards;
    // The LM head on every row's still-masked positions at once.
    std::vector<torch::Tensor> rows_idx, masked, masked_pos;
    for (size_t j = 0; j < work.size(); ++j) {
      const Row& r = *work[j];
      auto m_L = r.x_T.narrow(0, r.b * L, L) == r.mask;
      masked.push_back(m_L);
      masked_pos.push_back(m_L.nonzero().squeeze(1));
      rows_idx.push_back(masked_pos.back() + (fr.offset[j] + segs[j].ids_L.size(0) - L));
    }
    const auto logits_MV = head_logits(model_, fr.hidden_ND.index_select(0, torch::cat(rows_idx)));
    const double fwd_ms = std::chrono::duration<double, std::milli>(Clock::now() - tf).count();
    int64_t row_off = 0;
    double u_sum = 0.0;
    for (size_t j = 0; j < work.size(); ++j) {
      Row& r = *work[j];
      const int64_t lo = r.b * L, n_masked = rows_idx[j].size(0);
      auto block_x = r.x_T.narrow(0, lo, L);
      const auto& masked_L = masked[j];
      auto cand = block_candidates(logits_MV.narrow(0, row_off, n_masked), masked_pos[j], L, r.p, r.gen);
      row_off += n_masked;
      const int64_t n = r.p.rule == ThresholdRule::kLlada2 ? r.schedule[static_cast<size_t>(r.s)] : 1;
      auto commit_L = threshold_commit(cand.conf_N, r.p.rule, r.p.threshold, r.p.factor, n).logical_and(masked_L);
      block_x.copy_(torch::where(commit_L, cand.token_N, block_x));
      ForwardStat fs;
      fs.block = r.b;
      fs.step = r.s;
      fs.tokens_in = segs[j].ids_L.size(0);
      fs.committed = commit_L.sum().item<int64_t>();
      fs.ms = fwd_ms;
      fs.unique_experts_per_layer = fr.unique_experts[j];
      fs.expert_bytes = fr.expert_bytes[j];
      u_sum += fs.unique_experts_per_layer;
      r.res.per_forward.push_back(fs);
      ++r.res.forwards;
      ++r.s;
      if (r.p.eos_early_stop && !r.stops.empty() && commit_L.logical_and(torch::isin(cand.token_N, r.stops_S)).any().item<bool>()) {
        // The first stop id after the prompt ends the output if nothing before it is still masked.
        auto gen_part = r.x_T.narrow(0, r.P, r.total - r.P);
        const int64_t e = torch::isin(gen_part, r.stops_S).nonzero().min().item<int64_t>();
        if (!(gen_part.narrow(0, 0, e) == r.mask).any().item<bool>()) {
          r.cut = r.P + e;
          r.res.eos_stopped = true;
        }
      }
      RowEvent ev;
      ev.id = r.id;
      ev.block = r.b;
      ev.stepped = true;
      ev.unique_experts = fs.unique_experts_per_layer;
      const int64_t c0 = std::max(lo, r.P), c1 = std::min(lo + L, r.P + r.p.gen_length);
      ev.canvas = to_vec(r.x_T.narrow(0, c0, std::max<int64_t>(0, c1 - c0)));
      const bool block_done = !(block_x == r.mask).any().item<bool>() || r.s >= r.max_steps;
      if (r.cut >= 0 || (block_done && (r.is_stop_any(r.x_T.narrow(0, r.P, lo + L - r.P)) || r.b + 1 >= r.NB))) {
        finish(r, ev);
      } else if (block_done) {
        auto toks = to_vec(r.x_T.narrow(0, r.P, c1 - r.P));
        ev.final_tokens.assign(toks.begin() + static_cast<int64_t>(r.emitted), toks.end());
        r.emitted = toks.size();
        ++r.b;
        r.s = 0;
      }
      events.push_back(std::move(ev));
    }
    st.rows = static_cast<int64_t>(work.size());
    for (const auto& g : segs) st.tokens_in += g.ids_L.size(0);
    st.unique_experts_per_block = u_sum / static_cast<double>(work.size());
  }
  // Finished rows leave now.
  std::vector<int64_t> gone;
  for (const auto& ev : events)
    if (ev.finished) gone.push_back(ev.id);
  rows_.erase(std::remove_if(rows_.begin(), rows_.end(),
                             [&](const std::unique_ptr<Row>& r) {
                               return std::find(gone.begin(), gone.end(), r->id) != gone.end();
                             }),
              rows_.end());
  st.ms = std::chrono::duration<double, std::milli>(Clock::now() - t_step).count();
  if (stats) *stats = st;
  return events;
}

}  // namespace ecdlm::gen
