// Small model configs shared by unit tests.
#pragma once
#include "ecdlm/model/config.h"

namespace ecdlm::test {

// Token-choice MoE: 2 layers, hidden 32, 4 heads of 8, 8 experts of 16 (k = 2), a shared expert;
// the last vocabulary id is the mask, the one before it EOS.
inline ModelConfig small_tc_config(int64_t vocab = 48, int64_t shared_expert = 16) {
  ModelConfig c;
  c.vocab_size = vocab;
  c.hidden_size = 32;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 4;
  c.head_dim = 8;
  c.num_experts = 8;
  c.num_experts_per_tok = 2;
  c.moe_intermediate_size = 16;
  c.shared_expert_intermediate_size = shared_expert;
  c.mask_token_id = vocab - 1;
  c.eos_token_id = vocab - 2;
  c.router_type = RouterType::kTokenChoice;
  c.validate("test");
  return c;
}

}  // namespace ecdlm::test
