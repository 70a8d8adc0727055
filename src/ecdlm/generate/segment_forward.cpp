#include "ecdlm/generate/segment_forward.h"

#include <cmath>
#include <map>
#include <stdexcept>
#include <string>

#include "ecdlm/kernels/attention.h"
#include "ecdlm/model/attention.h"
#include "ecdlm/nn/dtype.h"
#include "ecdlm/util/compat.h"
#include "ecdlm/util/profile.h"

namespace ecdlm::gen {
namespace {

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("forward_segments: " + what);
}

// AttentionImpl::forward for every segment: the projections on all tokens at once, the scores of
// each segment against its own cache (+ its own tokens), appending each segment's K/V prefix.
torch::Tensor segment_attention(AttentionImpl& a, const ModelConfig& cfg, const torch::Tensor& x_1ND,
                                const RopeTable& rope, const std::vector<Segment>& segs,
                                const std::vector<int64_t>& off, const std::vector<int64_t>& visible,
                                int64_t block_length, std::vector<torch::Tensor>& masks, size_t layer) {
  prof::Scope ps(prof::kAttention);
  const int64_t N = x_1ND.size(1), H = cfg.num_attention_heads, Hkv = cfg.num_key_value_heads;
  const int64_t hd = cfg.head_dim, group = H / Hkv;
  auto qkv = a.query_key_value(x_1ND).view({1, N, H + 2 * Hkv, hd});
  auto parts = qkv.split_with_sizes({H, Hkv, Hkv}, 2);
  auto q_1NHd = parts[0], k_1NHd = parts[1], v_1NHd = parts[2];
  if (cfg.use_qk_norm) {
    q_1NHd = a.query_layernorm(q_1NHd);
    k_1NHd = a.key_layernorm(k_1NHd);
  }
  q_1NHd = apply_rope(q_1NHd, rope);
  k_1NHd = apply_rope(k_1NHd, rope);
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  // Append each segment's K/V prefix after its attention (the next step's cache).
  auto append = [&](size_t s) {
    const int64_t n = segs[s].append_n;
    if (n == 0) return;
    auto& c = segs[s].kv->layers[layer];
    auto kn = k_1NHd.narrow(1, off[s], n).transpose(1, 2), vn = v_1NHd.narrow(1, off[s], n).transpose(1, 2);
    c.k = c.k.defined() ? torch::cat({c.k, kn}, 2) : kn.contiguous();
    c.v = c.v.defined() ? torch::cat({c.v, vn}, 2) : vn.contiguous();
  };
  if (kernels::decode_attention_enabled()) {
    // All segments in one parallel region, reading each cache where it lies (no cat, no mask).
    const auto q_NHd = q_1NHd[0].contiguous(), k_NKd = k_1NHd[0].contiguous(), v_NKd = v_1NHd[0].contiguous();
    std::vector<kernels::AttnRow> rows(segs.size());
    for (size_t s = 0; s < segs.size(); ++s) {
      const auto& c = segs[s].kv->layers[layer];
      rows[s].row0 = off[s];
      rows[s].len = segs[s].ids_L.size(0);
      if (c.k.defined()) {
        rows[s].k_HPd = c.k[0];
        rows[s].v_HPd = c.v[0];
      }
    }
    if (kernels::decode_attention_applies(q_NHd, k_NKd, v_NKd, rows, visible)) {
      const auto out = kernels::decode_attention(q_NHd, k_NKd, v_NKd, rows, visible, scale);
      for (size_t s = 0; s < segs.size(); ++s) append(s);
      return a.dense(out.view({1, N, H * hd}));
    }
  }
  std::vector<torch::Tensor> outs;
  outs.reserve(segs.size());
  for (size_t s = 0; s < segs.size(); ++s) {
    const int64_t L = segs[s].ids_L.size(0);
    auto q = q_1NHd.narrow(1, off[s], L).transpose(1, 2);  // [1, H, L, hd]
    auto k_new = k_1NHd.narrow(1, off[s], L).transpose(1, 2);
    auto v_new = v_1NHd.narrow(1, off[s], L).transpose(1, 2);
    auto& c = segs[s].kv->layers[layer];
    auto k = c.k.defined() ? torch::cat({c.k.to(k_new.scalar_type()), k_new}, 2) : k_new;
    auto v = c.v.defined() ? torch::cat({c.v.to(v_new.scalar_type()), v_new}, 2) : v_new;
    const int64_t S = k.size(2);
    auto q_g = q.reshape({1, Hkv, group * L, hd});
    auto scores_f = to_f32_or_wider(torch::matmul(q_g, k.transpose(-1, -2)) * scale).view({1, Hkv, group, L, S});
    if (!masks[s].defined()) masks[s] = block_causal_mask(S - L, L, S, block_length);
    scores_f = scores_f + masks[s].view({1, 1, 1, L, S});
    torch::Tensor probs;
    {
      compat::AutocastOff fp32;
      probs = torch::softmax(scores_f, -1);
    }
    auto out = torch::matmul(probs.view({1, Hkv, group * L, S}).to(v.scalar_type()), v);
    outs.push_back(out.view({1, H, L, hd}).transpose(1, 2).reshape({1, L, H * hd}));
    append(s);
  }
  return a.dense(outs.size() == 1 ? outs[0] : torch::cat(outs, 1));
}

}  // namespace

bool segments_may_differ(const ModelConfig& cfg) {
  return !(cfg.router_type == RouterType::kExpertChoice && cfg.num_moe_layers() > 0);
}

bool moe_capacity_depends_on_input(const ModelConfig& cfg) {
  return segments_may_differ(cfg) && cfg.num_moe_layers() > 0 && cfg.moe_capacity_factor > 0.0;
}

SegmentForwardResult forward_segments(MoeDlm& model, const std::vector<Segment>& segs, int64_t block_length,
                                      const moe::InferenceRouting* routing) {
  const auto& cfg = model->config();
  require(!segs.empty(), "no segments");
  require(block_length > 0, "block_length must be > 0");
  const bool ec = !segments_may_differ(cfg);
  // Token choice with a capacity factor: capacity is pooled over the MoE input, so run it per row.
  const bool moe_per_segment = moe_capacity_depends_on_input(cfg);
  const size_t S = segs.size();
  SegmentForwardResult r;
  r.offset.resize(S);
  r.unique_experts.assign(S, 0.0);
  r.expert_bytes.assign(S, 0.0);
  std::vector<torch::Tensor> ids, pos, masks(S);  // masks: built on first use (torch's attention path)
  std::vector<int64_t> visible;                    // keys each query sees (the fused kernel)
  int64_t N = 0;
  for (size_t s = 0; s < S; ++s) {
    const auto& g = segs[s];
    require(g.kv != nullptr, "segment without a KV cache");
    const int64_t L = g.ids_L.size(0);
    require(L > 0 && L % block_length == 0, "segment length " + std::to_string(L) + " is not whole blocks");
    require(g.append_n >= 0 && g.append_n <= L && g.stats_n >= 0 && g.stats_n <= L, "append_n / stats_n outside the segment");
    require(!ec || L == segs[0].ids_L.size(0), "expert-choice segments must have one length");
    if (g.kv->layers.empty()) g.kv->layers.resize(static_cast<size_t>(cfg.num_hidden_layers));
    const int64_t p0 = g.kv->length();
    r.offset[s] = N;
    N += L;
    ids.push_back(g.ids_L);
    pos.push_back(torch::arange(p0, p0 + L, torch::kInt64));
    const auto vis = kernels::block_causal_visible(p0, L, block_length);
    visible.insert(visible.end(), vis.begin(), vis.end());
  }
  const auto ids_1N = torch::cat(ids).view({1, N});
  auto x = model->model->word_embeddings(ids_1N);
  const auto rope = rope_table(torch::cat(pos), cfg.rotary_dim(), cfg.rope_theta, x.scalar_type());
  moe::MoeForwardArgs margs;
  margs.routing = routing;
  const int64_t L0 = segs[0].ids_L.size(0);
  if (ec) {
    const auto r_B = (ids_1N.view({static_cast<int64_t>(S), L0}) == cfg.mask_token_id).to(torch::kFloat32).mean(1);
    margs.capacity_B = model->capacity_for(r_B, L0);
  }
  std::vector<int64_t> layers_with_plan(S, 0);
  auto has_plan = [](const moe::MoeBlockImpl& blk) {
    return blk.last_plan().idx_TK.defined() || blk.last_plan().token_EN.defined();
  };
  auto add_unique = [&](const moe::MoeBlockImpl& blk, size_t s, double u) {
    r.unique_experts[s] += u;
    r.expert_bytes[s] += u * static_cast<double>(blk.experts->bytes_per_expert());
    ++layers_with_plan[s];
  };
  // Unique experts of segment s in the plan of the one-sequence MoE call that covered it (Lp rows).
  auto add_stats = [&](const moe::MoeBlockImpl& blk, size_t s, int64_t Lp, int64_t row_in_call) {
    if (segs[s].stats_n == 0 || !has_plan(blk)) return;
    const int64_t L = segs[s].ids_L.size(0);
    add_unique(blk, s, moe::unique_experts_B(blk.last_plan(), 1, Lp, row_in_call + L - segs[s].stats_n, segs[s].stats_n)[0]
                           .item<double>());
  };
  size_t li = 0;
  for (auto& m : model->model->layers->children()) {
    auto layer = std::dynamic_pointer_cast<DecoderLayerImpl>(m);
    auto h = x + segment_attention(*layer->attention, cfg, layer->input_layernorm(x), rope, segs, r.offset, visible,
                                                    block_length, masks, li);
    auto n = layer->post_attention_layernorm(h);
    if (layer->moe_mlp.is_empty()) {
      prof::Scope ps(prof::kDense);
      x = h + layer->dense_mlp(n);
    } else if (ec) {
      const auto B = static_cast<int64_t>(S);
      x = h + layer->moe_mlp(n.view({B, L0, n.size(2)}), margs).view({1, N, n.size(2)});
      // One pass over the plan per distinct stats_n (all sequences at once), not one per segment.
      if (has_plan(*layer->moe_mlp)) {
        std::map<int64_t, std::vector<double>> u_by_n;
        for (size_t s = 0; s < S; ++s) {
          const int64_t sn = segs[s].stats_n;
          if (sn == 0) continue;
          auto& u = u_by_n[sn];
          if (u.empty()) {
            const auto u_B = moe::unique_experts_B(layer->moe_mlp->last_plan(), B, L0, L0 - sn, sn).contiguous();
            u.assign(u_B.data_ptr<double>(), u_B.data_ptr<double>() + B);
          }
          add_unique(*layer->moe_mlp, s, u[s]);
        }
      }
    } else if (moe_per_segment) {
      std::vector<torch::Tensor> ys;
      for (size_t s = 0; s < S; ++s) {
        const int64_t L = segs[s].ids_L.size(0);
        ys.push_back(layer->moe_mlp(n.narrow(1, r.offset[s], L), margs));
        add_stats(*layer->moe_mlp, s, L, 0);
      }
      x = h + torch::cat(ys, 1);
    } else {
      x = h + layer->moe_mlp(n, margs);
      for (size_t s = 0; s < S; ++s) add_stats(*layer->moe_mlp, s, N, r.offset[s]);
    }
    ++li;
  }
  for (size_t s = 0; s < S; ++s)
    if (layers_with_plan[s] > 0) r.unique_experts[s] /= static_cast<double>(layers_with_plan[s]);
  r.hidden_ND = model->model->norm(x)[0];
  return r;
}

}  // namespace ecdlm::gen
