// Inference flags shared by generate, logits, eval and bench generate: routing policy (--moe-*,
// --block-*, --moe-des-*) and how a model is loaded for it (expert choice = a router swap at load time).
#pragma once
#include <CLI/CLI.hpp>

#include <string>
#include <vector>

#include "ecdlm/model/checkpoint.h"
#include "ecdlm/model/moe_dlm.h"
#include "ecdlm/moe/inference_routing.h"

namespace ecdlm::cli {

struct RoutingFlags {
  std::string policy;                 // "" = the model's default (block for dMoE checkpoints)
  double block_top_p = -1;            // < 0: the model's core_threshold, else 0.6
  int64_t block_min_experts = 16;
  int64_t block_chunk = 32;
  int64_t topk_cap = 4;
  double des_s_ratio = 0.65, des_v_threshold = 0.07;  // as moe::InferenceRouting
  int64_t des_min_experts = 0, des_chunk = 32;
  // A policy's parameter flags, to say so when one is given and routing is another policy.
  struct PolicyOpt {
    CLI::Option* opt;
    std::vector<moe::RoutingPolicy> policies;
    std::string applies;  // "block", "des-s / des-v", ...
  };
  std::vector<PolicyOpt> policy_opts;
  std::string ec_schedule;            // ec on a TC model: capacity schedule (default static)
  double ec_k_min = 0, ec_k_max = 0;
  std::string dtype;                  // --dtype: f32 | bf16; "" = the checkpoint's stored dtype
  std::string kernel = "auto";        // --kernel: auto | amx | avx512 | torch (kernels/small_m.h)
  std::string quant_kernel = "auto";  // --quant-kernel: auto | amx | vnni | avx2 | bf16 | torch (kernels/quant.h)
  std::string quant_repack = "auto";  // --quant-repack: auto | on | off (kernels/quant_repack.h)
  std::string mmap = "auto";          // --mmap: auto | on | off (LoadOptions::copy_weights)

  void add_to(CLI::App* sub);
  // The effective routing for `cfg` (validated; UserError naming the flag), logged with its source.
  // request_defaults (serve): the flags are the defaults a request's own policy starts from, so a
  // parameter of another policy is noted, not warned about.
  moe::InferenceRouting resolve(const ModelConfig& cfg, bool request_defaults = false) const;
  // Where the effective policy comes from: "flag", "config" or "default" (routing_source below).
  std::string policy_source(const ModelConfig& cfg) const;
};

// Where a model's routing policy comes from without --moe-routing: "config" (dMoE keys mode
// "aggregate" / core_threshold in config.json: block routing) or "default" (built in: token).
std::string routing_source(const ModelConfig& cfg);
// One line for logs and `info`: the policy, its parameters and why it is the one in effect.
std::string describe_routing(const moe::InferenceRouting& r, const ModelConfig& cfg, const std::string& source,
                             bool p_from_flag = false);

// Trained with bidirectional attention (LLaDA-MoE, ecdlm's own models): the llada2 / fast-dllm
// decoders' block-causal attention and KV cache only approximate it.
bool trained_bidirectional(const ModelConfig& cfg);

// Loads a model for inference with a routing policy: weights mapped from the checkpoint in --dtype
// (experts bound per expert, so unrouted experts are never read). `ec` turns a token-choice
// checkpoint into expert choice (router swap, gate weights reused, capacity k(r) from
// --moe-capacity-*); others load as is.
// Without --dtype the weights load in the checkpoint's stored dtype (bf16, else f32); every
// conversion is logged with its size. `dtype` receives the dtype used ("f32" / "bf16").
// A quantized checkpoint also gets --quant-kernel and --quant-repack (every packed weight's
// output-lane copies built now, in parallel, when repacking is on).
MoeDlm load_for_routing(const std::string& dir, const RoutingFlags& f, LoadStats* stats = nullptr,
                        std::string* dtype = nullptr);

// The dtype inference loads `dir` in without --dtype: "bf16" for bf16 weights, else "f32" (f16
// is computed as f32); "" when the directory has no readable weights.
std::string default_dtype(const std::string& dir);

// "f32" / "bf16" -> dtype; UserError naming --dtype otherwise.
torch::ScalarType parse_dtype(const std::string& s);

// Parses "1,2,3" / "1 2 3" into ids; UserError naming `flag` otherwise.
std::vector<int64_t> parse_ids(const std::string& s, const std::string& flag);

}  // namespace ecdlm::cli
