// Batched threshold block decoding (threshold.h, threshold_generate_batch). The per-row decisions
// are those of threshold_generate; what is batched is the forward: every step runs the model once
// on the rows that still have masks in the current block.
#include <algorithm>
#include <ATen/CPUGeneratorImpl.h>

#include <chrono>
#include <map>

#include "ecdlm/kernels/small_m.h"
#include "ecdlm/generate/threshold.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/profile.h"

namespace ecdlm::gen {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

torch::Tensor index_tensor(const std::vector<int64_t>& v) { return torch::tensor(v, torch::kInt64); }

// The cached K/V of batch rows `pos` (int64 [n]) in every layer.
KvCache select_rows(const KvCache& kv, const torch::Tensor& pos) {
  KvCache out;
  out.layers.resize(kv.layers.size());
  for (size_t l = 0; l < kv.layers.size(); ++l) {
    if (!kv.layers[l].k.defined()) continue;
    out.layers[l].k = kv.layers[l].k.index_select(0, pos);
    out.layers[l].v = kv.layers[l].v.index_select(0, pos);
  }
  return out;
}

struct Row {
  const std::vector<int64_t>* prompt = nullptr;
  int64_t P = 0, NB = 0, total = 0;
  at::Generator gen;
  ThresholdResult res;
  int64_t cut = -1;  // absolute index of the EOS that ends the output (inclusive), -1 = none
  bool done = false;
};

// Generated tokens of a finished (or cancelled) row, cut as threshold_generate cuts them.
void finish_row(Row& r, const torch::Tensor& x_T, int64_t gen_length, const std::vector<int64_t>& stops,
                Clock::time_point t0) {
  auto out = x_T.narrow(0, r.P, std::min(gen_length, r.total - r.P)).contiguous();
  std::vector<int64_t> toks(out.data_ptr<int64_t>(), out.data_ptr<int64_t>() + out.numel());
  if (r.cut >= 0) toks.resize(static_cast<size_t>(std::min<int64_t>(r.cut - r.P + 1, static_cast<int64_t>(toks.size()))));
  for (size_t i = 0; i < toks.size(); ++i)
    if (std::find(stops.begin(), stops.end(), toks[i]) != stops.end()) {
      toks.resize(i + 1);
      break;
    }
  r.res.tokens = std::move(toks);
  double u = 0.0;
  for (const auto& f : r.res.per_forward) u += f.unique_experts_per_layer;
  r.res.avg_unique_experts_per_layer =
      r.res.per_forward.empty() ? 0.0 : u / static_cast<double>(r.res.per_forward.size());
  r.res.seconds = seconds_since(t0);
  r.done = true;
}

// Decodes rows sharing the same number of whole prompt blocks as one batch. Returns false when
// the callback cancelled (every unfinished row is then marked cancelled).
bool decode_group(MoeDlm& model, std::vector<Row*>& rows, const ThresholdParams& p, int64_t mask,
                  const std::vector<int64_t>& stops, const StepCallback& cb, Clock::time_point t0) {
  const auto stops_S = torch::tensor(stops, torch::kInt64);
  auto is_stop = [&](const torch::Tensor& t) { return torch::isin(t, stops_S); };
  const int64_t L = p.block_length, G = static_cast<int64_t>(rows.size());
  const int64_t first_block = rows[0]->P / L;
  const int64_t steps = std::max<int64_t>(1, std::min(p.steps, p.gen_length / p.minimal_topk));
  const int64_t max_steps = p.rule == ThresholdRule::kLlada2 ? steps : L;
  const auto schedule = transfer_schedule(L, steps);
  const moe::InferenceRouting* routing = p.routing.policy == moe::RoutingPolicy::kToken ? nullptr : &p.routing;
  int64_t width = 0, max_nb = 0;
  for (auto* r : rows) width = std::max(width, r->total), max_nb = std::max(max_nb, r->NB);
  // The group's canvas: row g holds its prompt, then masks; columns past a row's total are unused.
  auto x = torch::full({G, width}, mask, torch::kInt64);
  for (int64_t g = 0; g < G; ++g)
    if (rows[static_cast<size_t>(g)]->P > 0)
      x[g].narrow(0, 0, rows[static_cast<size_t>(g)]->P).copy_(torch::tensor(*rows[static_cast<size_t>(g)]->prompt, torch::kInt64));

  KvCache kv;
  std::vector<int64_t> kv_rows;  // group rows held by the cache, in its batch order
  auto append_blocks = [&](const std::vector<int64_t>& which, int64_t from, int64_t len) {
    model->forward(x.index_select(0, index_tensor(which)).narrow(1, from, len),
                   block_step_options(L, routing, &kv, /*kv_append=*/true));
    for (auto g : which) ++rows[static_cast<size_t>(g)]->res.cache_forwards;
  };
  if (p.kv_cache) {
    for (int64_t g = 0; g < G; ++g) kv_rows.push_back(g);
    if (first_block > 0) append_blocks(kv_rows, 0, first_block * L);
  }
  // A finished block's K/V ride along with the next block's first forward when every cached row
  // still decodes it.
  const bool ride_along = kv_rides_along(p, model->config());
  bool pending = false;

  int64_t step_global = 0;
  for (int64_t b = first_block; b < max_nb; ++b) {
    const int64_t lo = b * L;
    std::vector<int64_t> work;  // rows decoding block b
    for (int64_t g = 0; g < G; ++g)
      if (!rows[static_cast<size_t>(g)]->done) work.push_back(g);
    if (work.empty()) break;
    for (int64_t s = 0; s < max_steps; ++s) {
      std::vector<int64_t> active;
      {
        auto has_mask_G = (x.narrow(1, lo, L) == mask).any(1);
        for (auto g : work)
          if (!rows[static_cast<size_t>(g)]->done && has_mask_G[g].item<bool>()) active.push_back(g);
      }
      if (active.empty()) break;
      const auto idx = index_tensor(active);
      const auto tf = Clock::now();
      const auto prof0 = prof::totals_ms();
      auto o = block_step_options(L, routing);  // the head runs later, all rows in one call
      torch::Tensor hidden_BLD;
      int64_t L_in;
      if (pending && active.size() != kv_rows.size()) {  // not every cached row steps: append alone
        append_blocks(kv_rows, lo - L, L);
        pending = false;
      }
      if (pending) {
        L_in = 2 * L;
        o.kv_cache = &kv;
        o.kv_append = true;
        o.kv_append_n = L;
        hidden_BLD = model->forward(x.index_select(0, idx).narrow(1, lo - L, 2 * L), o).hidden_BLD.narrow(1, L, L);
        pending = false;
        for (auto g : active) ++rows[static_cast<size_t>(g)]->res.ride_along_appends;
      } else if (p.kv_cache) {
        L_in = L;
        KvCache sub;
        o.kv_cache = &kv;
        if (active.size() != kv_rows.size()) {
          // Some cached rows have finished this block: forward the others with their K/V only.
          std::vector<int64_t> pos;
          for (size_t i = 0, j = 0; i < kv_rows.size() && j < active.size(); ++i)
            if (kv_rows[i] == active[j]) pos.push_back(static_cast<int64_t>(i)), ++j;
          sub = select_rows(kv, index_tensor(pos));
          o.kv_cache = &sub;
        }
        hidden_BLD = model->forward(x.index_select(0, idx).narrow(1, lo, L), o).hidden_BLD;
      } else {
        L_in = lo + L;
        hidden_BLD = model->forward(x.index_select(0, idx).narrow(1, 0, lo + L), o).hidden_BLD.narrow(1, lo, L);
      }
      const auto masked_BL = x.index_select(0, idx).narrow(1, lo, L) == mask;
      const auto count_B = masked_BL.sum(1).contiguous();
      const auto logits_MV = head_logits(
          model, hidden_BLD.reshape({-1, hidden_BLD.size(2)}).index_select(0, masked_BL.reshape({-1}).nonzero().squeeze(1)));
      const auto prof1 = prof::totals_ms();
      const auto es = last_forward_expert_stats(model, static_cast<int64_t>(active.size()), L_in, L_in - L, L);
      const double fwd_ms = std::chrono::duration<double, std::milli>(Clock::now() - tf).count();
      int64_t committed_all = 0, row_off = 0;
      for (size_t j = 0; j < active.size(); ++j) {
        Row& r = *rows[static_cast<size_t>(active[j])];
        auto row_x = x[active[j]];
        auto block_x = row_x.narrow(0, lo, L);
        const auto masked_L = masked_BL[static_cast<int64_t>(j)];
        const int64_t n_masked = count_B[static_cast<int64_t>(j)].item<int64_t>();
        auto cand = block_candidates(logits_MV.narrow(0, row_off, n_masked), masked_L.nonzero().squeeze(1), L, p, r.gen);
        row_off += n_masked;
        const auto& conf_L = cand.conf_N;
        const int64_t n = p.rule == ThresholdRule::kLlada2 ? schedule[static_cast<size_t>(s)] : 1;
        auto commit_L = threshold_commit(conf_L, p.rule, p.threshold, p.factor, n).logical_and(masked_L);
        block_x.copy_(torch::where(commit_L, cand.token_N, block_x));
        ForwardStat st;
        st.block = b;
        st.step = s;
        st.tokens_in = L_in;
        st.committed = commit_L.sum().item<int64_t>();
        st.ms = fwd_ms;
        st.attention_ms = prof1[prof::kAttention] - prof0[prof::kAttention];
        st.router_ms = prof1[prof::kRouter] - prof0[prof::kRouter];
        st.experts_ms = prof1[prof::kExperts] - prof0[prof::kExperts] + prof1[prof::kShared] - prof0[prof::kShared];
        st.dense_ms = prof1[prof::kDense] - prof0[prof::kDense];
        st.head_ms = prof1[prof::kHead] - prof0[prof::kHead];
        st.unique_experts_per_layer = es.unique_B[static_cast<int64_t>(j)].item<double>();
        st.expert_bytes = es.bytes_B[static_cast<int64_t>(j)].item<double>();
        r.res.per_forward.push_back(st);
        ++r.res.forwards;
        committed_all += st.committed;
        if (p.eos_early_stop && !stops.empty() && commit_L.logical_and(is_stop(cand.token_N)).any().item<bool>()) {
          // The first stop id after the prompt ends the output if nothing before it is still masked.
          auto gen_part = row_x.narrow(0, r.P, r.total - r.P);
          const int64_t e = is_stop(gen_part).nonzero().min().item<int64_t>();
          if (!(gen_part.narrow(0, 0, e) == mask).any().item<bool>()) {
            r.cut = r.P + e;
            r.res.eos_stopped = true;
            finish_row(r, row_x, p.gen_length, stops, t0);
          }
        }
      }
      if (cb && !cb(StepInfo{step_global, max_nb * steps, b, &x, fwd_ms, committed_all})) {
        for (int64_t g = 0; g < G; ++g) {
          Row& r = *rows[static_cast<size_t>(g)];
          if (r.done) continue;
          r.res.cancelled = true;
          finish_row(r, x[g], p.gen_length, stops, t0);
        }
        return false;
      }
      ++step_global;
    }
    if (pending) {  // no forward ran for this block
      append_blocks(kv_rows, lo - L, L);
      pending = false;
    }
    // A block with EOS after the prompt ends the row, as does its last block.
    for (auto g : work) {
      Row& r = *rows[static_cast<size_t>(g)];
      if (r.done) continue;
      if ((!stops.empty() && is_stop(x[g].narrow(0, r.P, lo + L - r.P)).any().item<bool>()) || b + 1 >= r.NB)
        finish_row(r, x[g], p.gen_length, stops, t0);
    }
    if (!p.kv_cache) continue;
    // Finished rows leave the cache; the others append the final block's K/V.
    std::vector<int64_t> keep, pos;
    for (size_t i = 0; i < kv_rows.size(); ++i)
      if (!rows[static_cast<size_t>(kv_rows[i])]->done) keep.push_back(kv_rows[i]), pos.push_back(static_cast<int64_t>(i));
    if (keep.size() != kv_rows.size()) {
      kv = keep.empty() ? KvCache() : select_rows(kv, index_tensor(pos));
      kv_rows = keep;
    }
    if (!keep.empty()) {
      if (ride_along)
        pending = true;
      else
        append_blocks(keep, lo, L);
    }
  }
  return true;
}

}  // namespace

std::vector<ThresholdResult> threshold_generate_batch(MoeDlm& model, const std::vector<std::vector<int64_t>>& prompts,
                                                      const ThresholdParams& p, const StepCallback& cb) {
  const auto& cfg = model->config();
  if (prompts.empty()) fail("", "prompt", "the batch is empty", "pass at least one prompt");
  for (const auto& pr : prompts) {
    validate_params(p, cfg, static_cast<int64_t>(pr.size()));
    for (auto t : pr)
      if (t < 0 || t >= cfg.vocab_size)
        fail("", "prompt", "token id " + std::to_string(t) + " outside the vocabulary", "");
  }
  const bool was_training = model->is_training();
  model->eval();
  torch::NoGradGuard ng;
  kernels::F32TilesScope f32_tiles;  // f32 products on the AVX-512 tiles while decoding
  const auto t0 = Clock::now();
  const int64_t L = p.block_length;
  const int64_t mask = p.mask_id >= 0 ? p.mask_id : cfg.mask_token_id;
  // Every id that ends the output (EOS and the extra stop ids, e.g. chat's <|role_end|>) acts alike.
  const std::vector<int64_t> stops = output_stop_ids(p, cfg);

  std::vector<Row> rows(prompts.size());
  std::map<int64_t, std::vector<Row*>> groups;  // by whole prompt blocks
  for (size_t i = 0; i < prompts.size(); ++i) {
    Row& r = rows[i];
    r.prompt = &prompts[i];
    r.P = static_cast<int64_t>(prompts[i].size());
    r.NB = (r.P + p.gen_length + L - 1) / L;
    r.total = r.NB * L;
    r.gen = at::detail::createCPUGenerator(p.seed + i);  // independent, reproducible streams per row
    groups[r.P / L].push_back(&r);
  }
  bool cancelled = false;
  for (auto& kv : groups) {
    if (cancelled) {
      for (auto* r : kv.second) r->res.cancelled = true, r->done = true;
      continue;
    }
    cancelled = !decode_group(model, kv.second, p, mask, stops, cb, t0);
  }
  if (was_training) model->train();
  std::vector<ThresholdResult> out;
  out.reserve(rows.size());
  for (auto& r : rows) out.push_back(std::move(r.res));
  return out;
}

}  // namespace ecdlm::gen
