#include "inference_opts.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <memory>
#include <sstream>

#include "ecdlm/model/checkpoint.h"
#include "ecdlm/model/model_dir.h"
#include "ecdlm/kernels/quant.h"
#include "ecdlm/kernels/quant_repack.h"
#include "ecdlm/util/profile.h"
#include "ecdlm/kernels/small_m.h"
#include "ecdlm/model/quantize.h"
#include "ecdlm/train/retrofit.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/log.h"
#include "ecdlm/util/strings.h"

namespace ecdlm::cli {

void RoutingFlags::add_to(CLI::App* sub) {
  sub->add_option("--moe-routing", policy,
                  "token (the model's own), ec (expert choice, capacity k(r) from the masked fraction of the "
                  "forwarded tokens), block (dMoE coreset per chunk), topk (smaller k), des-s / des-v (our "
                  "interpretation of the dMoE paper's DES-S / DES-V baselines); default: token, or block for dMoE "
                  "checkpoints")
      ->check(CLI::IsMember({"token", "ec", "block", "topk", "des-s", "des-v"}));
  using P = moe::RoutingPolicy;
  policy_opts.clear();
  const auto param = [&](CLI::Option* o, std::vector<P> policies, const char* applies) {
    policy_opts.push_back({o, std::move(policies), applies});
    return o;
  };
  param(sub->add_option("--block-top-p", block_top_p, "Block routing: coreset mass p in (0, 1] (default: the "
                                                      "model's core_threshold, else 0.6)"),
        {P::kBlock}, "block");
  param(sub->add_option("--block-min-experts", block_min_experts, "Block routing: minimum coreset size G")
            ->capture_default_str(),
        {P::kBlock}, "block");
  param(sub->add_option("--block-chunk", block_chunk, "Block routing: tokens per vote (aligned chunks)")
            ->capture_default_str(),
        {P::kBlock}, "block");
  param(sub->add_option("--moe-topk-cap", topk_cap, "topk routing: experts per token")->capture_default_str(),
        {P::kTopK}, "topk");
  const std::vector<P> des = {P::kDesS, P::kDesV};
  param(sub->add_option("--moe-des-s-ratio", des_s_ratio,
                        "des-s routing: (token, expert) pairs kept per chunk, as a fraction of tokens x k")
            ->capture_default_str(),
        {P::kDesS}, "des-s");
  param(sub->add_option("--moe-des-v-threshold", des_v_threshold,
                        "des-v routing: keep experts whose summed vote is >= this x the best expert's, in [0, 1]")
            ->capture_default_str(),
        {P::kDesV}, "des-v");
  param(sub->add_option("--moe-des-min-experts", des_min_experts, "des-s / des-v: minimum coreset size (0 = the model's k)")
            ->capture_default_str(),
        des, "des-s / des-v");
  param(sub->add_option("--moe-des-chunk", des_chunk, "des-s / des-v: tokens per coreset (aligned chunks)")
            ->capture_default_str(),
        des, "des-s / des-v");
  sub->add_option("--moe-capacity-schedule", ec_schedule, "ec routing on a token-choice model: k(r) schedule "
                                                          "(default static k = the model's top-k)");
  sub->add_option("--moe-capacity-k-min", ec_k_min, "ec routing: schedule k_min");
  sub->add_option("--moe-capacity-k-max", ec_k_max, "ec routing: schedule k_max");
  sub->add_option("--dtype", dtype, "Weight dtype: f32 or bf16 (default: the checkpoint's stored dtype, so "
                                    "nothing is converted; f16 loads as f32). Router, norms, softmax, MoE sum and "
                                    "logits stay f32; weights already in this dtype are used in place from the "
                                    "mmap, others are converted (logged with their size)")
      ->check(CLI::IsMember({"f32", "bf16"}));
  sub->add_option("--kernel", kernel,
                  "bf16 products with few token rows (KV-cached decoding: experts, projections, LM head): auto "
                  "(best this CPU has), amx (AMX-BF16, up to 64 rows), avx512 (AVX512-BF16, up to 16 rows; while "
                  "decoding every bf16 product at any row count (the routed experts of a layer in one parallel "
                  "region), so a served row's tokens do not depend on its batch), "
                  "torch (torch's linear always). Any choice but torch also runs f32 weights' products of up "
                  "to 512 rows on the AVX-512 f32 dot tiles")
      ->check(CLI::IsMember({"auto", "amx", "avx512", "torch"}))
      ->capture_default_str();
  sub->add_option("--quant-kernel", quant_kernel,
                  "Quantized checkpoints (convert --quantize): products of up to 64 token rows on auto (best this "
                  "CPU has), amx (vnni, with products of 9+ token rows on AMX-INT8 tiles; same results), vnni "
                  "(AVX512-VNNI int8), avx2 (AVX2 int8), bf16 (dequantized tiles, AVX512-BF16) or "
                  "torch (dequantize + torch's GEMM, every row count). torch is not batch-invariant: a served "
                  "row's tokens may depend on its batch")
      ->check(CLI::IsMember({"auto", "amx", "vnni", "avx2", "bf16", "torch"}))
      ->capture_default_str();
  sub->add_option("--quant-repack", quant_repack,
                  "Quantized checkpoints on AVX512-VNNI: run the quantized products on copies of the weights "
                  "repacked into output lanes, built at load (seconds per GB) and read in place by every product; "
                  "the checkpoint's row-layout pages are then handed back, so memory does not double. auto: on with "
                  "the vnni kernel, all built at load when they take at most 70% of the available memory, else "
                  "each on its first use")
      ->check(CLI::IsMember({"auto", "on", "off"}))
      ->capture_default_str();
  sub->add_option("--mmap", mmap,
                  "Weights already in the compute dtype: on = used in place from the file's mapping (an expert "
                  "never routed to is never read: models larger than memory run), off = copied into process "
                  "memory at load (reads the whole file; steps then stream process memory, not page-cache pages: "
                  "bf16 decodes faster). auto: off when they (and a quantized checkpoint's repacked copies) take at "
                  "most 70% of the available memory, else on. Packed quantized weights stay mapped")
      ->check(CLI::IsMember({"auto", "on", "off"}))
      ->capture_default_str();
}

torch::ScalarType parse_dtype(const std::string& s) {
  if (s == "f32" || s == "float32") return torch::kFloat32;
  if (s == "bf16" || s == "bfloat16") return torch::kBFloat16;
  fail("", "--dtype", "unknown dtype '" + s + "'", "use f32 or bf16");
}

moe::InferenceRouting RoutingFlags::resolve(const ModelConfig& cfg, bool request_defaults) const {
  auto r = default_routing(cfg);
  if (!policy.empty()) r.policy = moe::parse_routing_policy(policy);
  // ec is applied at load time; in the layers it is the (converted) model's own routing.
  if (r.policy == moe::RoutingPolicy::kExpertChoice) r.policy = moe::RoutingPolicy::kToken;
  if (block_top_p >= 0) r.block_top_p = block_top_p;
  r.block_min_experts = block_min_experts;
  r.block_chunk = block_chunk;
  r.topk_cap = topk_cap;
  r.des_s_ratio = des_s_ratio;
  r.des_v_threshold = des_v_threshold;
  r.des_min_experts = des_min_experts;
  r.des_chunk = des_chunk;
  for (const auto& po : policy_opts) {
    if (po.opt->count() == 0 || std::find(po.policies.begin(), po.policies.end(), r.policy) != po.policies.end())
      continue;
    if (request_defaults)
      LOG_INFO(po.opt->get_name() << ": the default for requests that choose " << po.applies
                                  << " (ecdlm.moe_routing); the server's routing is " << moe::routing_policy_name(r.policy));
    else
      LOG_WARN(po.opt->get_name() << " has no effect: routing is " << moe::routing_policy_name(r.policy)
                                  << " (it applies to --moe-routing " << po.applies << ")");
  }
  if (r.policy != moe::RoutingPolicy::kToken) r.validate(moe_config_from(cfg));
  if (r.policy == moe::RoutingPolicy::kToken && block_top_p >= 0 && !(block_top_p > 0 && block_top_p <= 1))
    fail("", "--block-top-p", "must be in (0, 1]", "");
  // ec is a load-time router swap: name it as the user chose it.
  LOG_INFO("routing: " << (policy == "ec" ? std::string("ec (expert choice, a router swap at load), from --moe-routing")
                                          : describe_routing(r, cfg, policy_source(cfg), block_top_p >= 0)));
  return r;
}

std::string RoutingFlags::policy_source(const ModelConfig& cfg) const {
  return policy.empty() ? routing_source(cfg) : "flag";
}

std::string routing_source(const ModelConfig& cfg) {
  return default_routing(cfg).policy == moe::RoutingPolicy::kToken ? "default" : "config";
}

std::string describe_routing(const moe::InferenceRouting& r, const ModelConfig& cfg, const std::string& source,
                             bool p_from_flag) {
  std::ostringstream os;
  os << moe::routing_policy_name(r.policy);
  if (r.policy == moe::RoutingPolicy::kBlock)
    os << " (p " << r.block_top_p
       << (p_from_flag                     ? " from --block-top-p"
           : cfg.dmoe_core_threshold > 0   ? " from config.json core_threshold"
                                           : " built in")
       << ", G " << r.block_min_experts << ", chunk " << r.block_chunk << ")";
  else if (r.policy == moe::RoutingPolicy::kTopK)
    os << " (cap " << r.topk_cap << ")";
  if (source == "flag")
    os << ", from --moe-routing";
  else if (source == "config")
    os << ", the default for this model: its config.json has dMoE's mode \"" << cfg.dmoe_mode
       << "\" (--moe-routing to change)";
  else
    os << ", the built-in default (the model's own routing; --moe-routing to change)";
  return os.str();
}

bool trained_bidirectional(const ModelConfig& cfg) { return cfg.arch == Arch::kLladaMoe || cfg.ecdlm_native; }

namespace {

std::unique_ptr<io::SafetensorsSet> open_weights(const std::string& dir) {
  try {
    return std::make_unique<io::SafetensorsSet>(io::SafetensorsSet::open(dir));
  } catch (const UserError&) {  // load_model reports it, after its own checks
    return nullptr;
  }
}

std::string dtype_for(const std::string& stored) { return stored == "BF16" ? "bf16" : stored.empty() ? "" : "f32"; }

}  // namespace

std::string default_dtype(const std::string& dir) {
  auto st = open_weights(dir);
  return st ? dtype_for(stored_weight_dtype(*st)) : "";
}

namespace {

// The checkpoint, or expert choice on a token-choice one (a router swap at load).
MoeDlm load_routed(const std::string& dir, const RoutingFlags& f, const LoadOptions& lo, LoadStats* stats) {
  if (f.policy != "ec") return load_model(dir, nullptr, lo, stats);
  auto cfg = ModelConfig::load(dir);
  if (cfg.router_type == RouterType::kExpertChoice) return load_model(dir, nullptr, lo, stats);
  RetrofitParams rp;
  if (!f.ec_schedule.empty()) rp.schedule = f.ec_schedule;
  rp.k_min = f.ec_k_min;
  rp.k_max = f.ec_k_max;
  auto ec = retrofit_config(cfg, rp);
  LOG_INFO("routing: expert choice on a token-choice model (router swap, schedule " << ec.moe_capacity_schedule
                                                                                     << ", k " << ec.num_experts_per_tok << ")");
  return load_model(dir, &ec, lo, stats);
}

// --quant-kernel and --quant-repack for a quantized checkpoint (set process-wide, logged once).
// auto's rule (model/quantize.h setup_quant_copies): LLaDA2.0-mini's q8 copies, 16.6 GB, fit a 24 GB
// machine and decode 1.7x faster than copies made on first use inside the steps.
void setup_quantized(MoeDlmImpl& model, const RoutingFlags& f) {
  kernels::set_quant_kernel(kernels::parse_quant_kernel(f.quant_kernel, "--quant-kernel"));
  kernels::set_quant_repack(false);
  if (quantized_bytes(model) == 0) return;
  const auto backend = kernels::quant_kernel_backend();
  if (f.quant_repack == "on" && !kernels::is_vnni(backend))
    fail("", "--quant-repack", "repacked weights run on the AVX512-VNNI kernel, and the quantized kernel in use is " +
                                   std::string(kernels::quant_kernel_name(backend)),
         "use --quant-kernel vnni on a CPU with AVX512-VNNI, or --quant-repack off");
  const std::string done = setup_quant_copies(model, f.quant_repack);
  LOG_INFO("quantized kernel: " << f.quant_kernel << " -> " << kernels::quant_kernel_name(backend)
                                << "; output-lane copies " << done);
}

// --mmap: whether the weights stored in the compute dtype are copied into process memory (logged).
bool decide_copy(const io::SafetensorsSet& st, torch::ScalarType dtype, const std::string& mode) {
  const int64_t in_place = in_place_bytes(st, dtype);
  if (in_place == 0 || mode == "on") {
    if (in_place > 0) LOG_INFO("weights: " << size_str(double(in_place)) << " used in place from the mapping (--mmap on)");
    return false;
  }
  const int64_t packed = packed_bytes(st);  // their output-lane copies (setup_quantized) take about as much
  const int64_t avail = prof::available_memory_bytes();
  const auto size = [](int64_t b) { return size_str(static_cast<double>(b)); };
  if (mode == "off" && avail >= 0 && in_place > avail)
    fail("", "--mmap", "off copies " + size(in_place) + " of weights into memory, and " + size(avail) + " is available",
         "use --mmap auto or on (weights read from the file as they are used), or a quantized checkpoint "
         "(ecdlm convert --quantize q4)");
  if (mode == "auto" && avail < 0) {
    LOG_INFO("weights: " << size(in_place) << " used in place from the mapping (--mmap auto: the available "
                            "memory is unknown)");
    return false;
  }
  if (mode == "auto" && in_place + packed > avail * 7 / 10) {
    LOG_INFO("weights: " << size(in_place) << " used in place from the mapping (--mmap auto: "
                         << size(in_place + packed) << (packed > 0 ? " with the quantized copies" : "")
                         << " would take more than 70% of the " << size(avail) << " available)");
    return false;
  }
  LOG_INFO("weights: " << size(in_place) << " copied into memory at load (--mmap " << mode
                       << (mode == "auto" ? ": they fit in 70% of the " + size(avail) + " available; --mmap on maps them"
                                          : std::string())
                       << ")");
  return true;
}

}  // namespace

MoeDlm load_for_routing(const std::string& dir, const RoutingFlags& f, LoadStats* stats, std::string* dtype) {
  LoadOptions lo;
  // A bf16 checkpoint loaded as f32 silently quadruples the memory a forward reads: say what is used and why.
  auto st = open_weights(dir);
  const std::string stored = st ? stored_weight_dtype(*st) : "";
  const std::string use = !f.dtype.empty() ? f.dtype : stored == "BF16" ? "bf16" : "f32";
  lo.dtype = parse_dtype(use);
  if (dtype) *dtype = use;
  auto lower = [](std::string d) {
    for (auto& c : d) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return d;
  };
  if (!stored.empty())
    LOG_INFO("weights: " << use << ", " << (!f.dtype.empty()  ? "from --dtype; the checkpoint stores " + lower(stored)
                                          : stored == "F16" ? std::string("the checkpoint stores f16, computed as f32")
                                                            : std::string("the checkpoint's stored dtype (--dtype to change)")));
  if (st)
    for (const auto& [from, bytes] : conversion_bytes(*st, lo.dtype))
      LOG_INFO("converting " << size_str(static_cast<double>(bytes)) << " of " << lower(from) << " weights to " << use
                             << (f.dtype.empty() ? "" : " (--dtype " + f.dtype + ")"));
  kernels::set_small_m(kernels::parse_small_m(f.kernel, "--kernel"));
  if (lo.dtype == torch::kBFloat16)
    LOG_INFO("small-M kernel: " << f.kernel << " -> " << kernels::small_m_name(kernels::small_m_backend())
                                << " (up to " << kernels::small_m_max_rows() << " token rows"
                                << (kernels::small_m_backend() == kernels::SmallM::kAvx512
                                        ? "; while decoding every product at any row count"
                                        : "")
                                << ")");
  lo.map_weights = true;
  if (st) lo.copy_weights = decide_copy(*st, lo.dtype, f.mmap);
  auto model = load_routed(dir, f, lo, stats);
  setup_quantized(*model, f);
  return model;
}

std::vector<int64_t> parse_ids(const std::string& s, const std::string& flag) {
  std::vector<int64_t> ids;
  std::string tok;
  std::istringstream in(s);
  while (std::getline(in, tok, ',')) {
    std::istringstream ws(tok);
    std::string part;
    while (ws >> part) {
      char* end = nullptr;
      const long long v = std::strtoll(part.c_str(), &end, 10);
      if (*end != '\0' || v < 0) fail("", flag, "'" + part + "' is not a token id", "pass ids like 12,7,99");
      ids.push_back(v);
    }
  }
  return ids;
}

}  // namespace ecdlm::cli
