#include "ecdlm/model/attention.h"

#include <cmath>

#include "ecdlm/kernels/attention.h"
#include "ecdlm/model/layers.h"
#include "ecdlm/util/compat.h"
#include "ecdlm/util/profile.h"

namespace ecdlm {

AttentionImpl::AttentionImpl(const ModelConfig& c)
    : n_heads_(c.num_attention_heads),
      n_kv_(c.num_key_value_heads),
      head_dim_(c.head_dim),
      rotary_dim_(c.rotary_dim()),
      theta_(c.rope_theta),
      qk_norm_(c.use_qk_norm) {
  query_key_value = register_module(
      "query_key_value", LinearNoBias(c.hidden_size, (n_heads_ + 2 * n_kv_) * head_dim_));
  dense = register_module("dense", LinearNoBias(n_heads_ * head_dim_, c.hidden_size));
  if (qk_norm_) {
    query_layernorm = register_module("query_layernorm", RMSNorm(head_dim_, c.rms_norm_eps));
    key_layernorm = register_module("key_layernorm", RMSNorm(head_dim_, c.rms_norm_eps));
  }
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x_BLD, const torch::Tensor& pos_L,
                                     const torch::Tensor& mask_LS, const LayerKv* past,
                                     LayerKv* present) {
  return forward(x_BLD, rope_table(pos_L, rotary_dim_, theta_, x_BLD.scalar_type()), mask_LS, past, present);
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x_BLD, const RopeTable& rope, const torch::Tensor& mask_LS,
                                     const LayerKv* past, LayerKv* present) {
  prof::Scope ps(prof::kAttention);
  const auto B = x_BLD.size(0), L = x_BLD.size(1);
  auto qkv = query_key_value(x_BLD).view({B, L, n_heads_ + 2 * n_kv_, head_dim_});
  auto parts = qkv.split_with_sizes({n_heads_, n_kv_, n_kv_}, 2);
  auto q_BLHd = parts[0], k_BLHd = parts[1], v_BLHd = parts[2];
  if (qk_norm_) {
    q_BLHd = query_layernorm(q_BLHd);
    k_BLHd = key_layernorm(k_BLHd);
  }
  q_BLHd = apply_rope(q_BLHd, rope);
  k_BLHd = apply_rope(k_BLHd, rope);
  if (kernels::decode_attention_enabled()) {
    // Inside the decoders: the fused kernel, when the mask is a visible prefix per query (block-
    // causal, causal, full), so a row rounds as it does in the batched server step (as
    // segment_attention).
    const int64_t P = past && past->k.defined() ? past->k.size(2) : 0;
    std::vector<int64_t> vis_L;
    if ((P == 0 || past->k.size(0) == B) && kernels::visible_from_mask(mask_LS, L, P + L, vis_L)) {
      const auto q_NHd = q_BLHd.reshape({B * L, n_heads_, head_dim_}).contiguous();
      const auto k_NKd = k_BLHd.reshape({B * L, n_kv_, head_dim_}).contiguous();
      const auto v_NKd = v_BLHd.reshape({B * L, n_kv_, head_dim_}).contiguous();
      std::vector<kernels::AttnRow> rows(static_cast<size_t>(B));
      std::vector<int64_t> vis;
      vis.reserve(static_cast<size_t>(B * L));
      for (int64_t b = 0; b < B; ++b) {
        auto& r = rows[static_cast<size_t>(b)];
        r.row0 = b * L;
        r.len = L;
        if (P > 0) {
          r.k_HPd = past->k[b];
          r.v_HPd = past->v[b];
        }
        vis.insert(vis.end(), vis_L.begin(), vis_L.end());
      }
      if (kernels::decode_attention_applies(q_NHd, k_NKd, v_NKd, rows, vis)) {
        if (present) {
          present->k = k_BLHd.transpose(1, 2);
          present->v = v_BLHd.transpose(1, 2);
        }
        const auto out = kernels::decode_attention(q_NHd, k_NKd, v_NKd, rows, vis, 1.0 / std::sqrt(double(head_dim_)));
        return dense(out.view({B, L, n_heads_ * head_dim_}));
      }
    }
  }
  auto q = q_BLHd.transpose(1, 2);  // [B, H, L, hd]
  auto k = k_BLHd.transpose(1, 2);  // [B, Hkv, L, hd]
  auto v = v_BLHd.transpose(1, 2);
  if (present) {
    present->k = k;
    present->v = v;
  }
  if (past && past->k.defined()) {
    k = torch::cat({past->k.to(k.scalar_type()), k}, 2);
    v = torch::cat({past->v.to(v.scalar_type()), v}, 2);
  }
  const auto S = k.size(2);
  const auto group = n_heads_ / n_kv_;
  // GQA without materializing repeated K/V: fold the group into the query length.
  auto q_g = q.reshape({B, n_kv_, group * L, head_dim_});
  auto scores = torch::matmul(q_g, k.transpose(-1, -2)) * (1.0 / std::sqrt(double(head_dim_)));
  auto scores_f = to_f32_or_wider(scores).view({B, n_kv_, group, L, S});
  if (mask_LS.defined()) scores_f = scores_f + mask_LS.view({1, 1, 1, L, S});
  torch::Tensor probs;
  {
    compat::AutocastOff fp32;
    probs = torch::softmax(scores_f, -1);
  }
  auto out = torch::matmul(probs.view({B, n_kv_, group * L, S}).to(v.scalar_type()), v);
  // -> [B, H, L, hd] -> [B, L, H*hd]
  out = out.view({B, n_heads_, L, head_dim_}).transpose(1, 2).reshape({B, L, n_heads_ * head_dim_});
  return dense(out);
}

int64_t KvCache::bytes() const {
  int64_t n = 0;
  for (const auto& l : layers)
    if (l.k.defined()) n += (l.k.numel() + l.v.numel()) * static_cast<int64_t>(l.k.element_size());
  return n;
}

torch::Tensor block_causal_mask(int64_t q0, int64_t Lq, int64_t S, int64_t block) {
  if (block <= 0) return torch::zeros({Lq, S});
  auto qb = torch::div(torch::arange(q0, q0 + Lq, torch::kInt64), block, "floor").view({Lq, 1});
  auto kb = torch::div(torch::arange(0, S, torch::kInt64), block, "floor").view({1, S});
  return torch::zeros({Lq, S}).masked_fill(kb > qb, -std::numeric_limits<float>::infinity());
}

}  // namespace ecdlm
