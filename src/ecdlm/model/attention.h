// Attention with fused QKV ([Q heads | K heads | V heads] rows), GQA, per-head QK RMSNorm before
// partial NeoX RoPE, fp32 softmax. The mask is an explicit additive [Lq, Lk] tensor.
#pragma once
#include <torch/torch.h>

#include "ecdlm/model/config.h"
#include "ecdlm/model/layers.h"

namespace ecdlm {

// Cached keys/values of one layer: k_BHkvSd / v_BHkvSd [B, Hkv, S, hd] for S cached positions.
struct LayerKv {
  torch::Tensor k, v;
};

// Prefix K/V of every layer. Exact for block-causal models when it holds whole finished blocks
// (later positions never change what earlier blocks see); for bidirectional models it is an
// approximation (earlier positions would see later ones).
struct KvCache {
  std::vector<LayerKv> layers;
  int64_t length() const { return layers.empty() || !layers[0].k.defined() ? 0 : layers[0].k.size(2); }
  int64_t bytes() const;
  void clear() { layers.clear(); }
};

class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const ModelConfig& cfg);
  // x_BLD [B, L, D]; pos_L int64 [L]; mask_LS f32 additive [L, S] (S = cached + L) or undefined
  // for full attention. `past` (optional) holds K/V for earlier positions; if `present` is given
  // it receives this call's K/V (after RoPE) for the caller to append.
  torch::Tensor forward(const torch::Tensor& x_BLD, const torch::Tensor& pos_L,
                        const torch::Tensor& mask_LS, const LayerKv* past = nullptr,
                        LayerKv* present = nullptr);
  // The same with the positions' RoPE tables built by the caller (once per model forward).
  torch::Tensor forward(const torch::Tensor& x_BLD, const RopeTable& rope, const torch::Tensor& mask_LS,
                        const LayerKv* past = nullptr, LayerKv* present = nullptr);
  int64_t rotary_dim() const { return rotary_dim_; }
  double rope_theta() const { return theta_; }

  LinearNoBias query_key_value{nullptr}, dense{nullptr};
  RMSNorm query_layernorm{nullptr}, key_layernorm{nullptr};

 private:
  int64_t n_heads_, n_kv_, head_dim_, rotary_dim_;
  double theta_;
  bool qk_norm_;
};
TORCH_MODULE(Attention);

// Additive mask for queries at positions [q0, q0+Lq) over keys [0, S):
// 0 where floor(q/block) >= floor(k/block), -inf elsewhere. block <= 0 means bidirectional.
torch::Tensor block_causal_mask(int64_t q0, int64_t Lq, int64_t S, int64_t block);

}  // namespace ecdlm
