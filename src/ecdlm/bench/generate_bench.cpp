#include "ecdlm/bench/generate_bench.h"
#include "ecdlm/bench/generate_plot.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <sstream>

#include "ecdlm/generate/threshold.h"
#include "ecdlm/kernels/quant.h"
#include "ecdlm/kernels/quant_repack.h"
#include "ecdlm/kernels/small_m.h"
#include "ecdlm/model/checkpoint.h"
#include "ecdlm/model/init.h"
#include "ecdlm/model/quantize.h"
#include "ecdlm/train/retrofit.h"
#include "ecdlm/util/compat.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/log.h"
#include "ecdlm/util/profile.h"
#include "ecdlm/util/progress.h"
#include "ecdlm/util/stats.h"
#include "ecdlm/util/strings.h"

namespace ecdlm::bench {
namespace {

struct Variant {
  std::string routing;
  double top_p = 0.0;
  bool kv = true;
  // Block routing's minimum coreset size G: false = 2k (the dMoE eval gate at HEAD, 16 for k = 8),
  // true = 3k/2 (the paper-era gate behind the paper's 14.6 experts per block, 12 for k = 8).
  bool paper_guard = false;
  kernels::SmallM kernel = kernels::SmallM::kAuto;
};

// Copies every parameter and buffer of `src` into `dst` (same names; a router swap keeps them).
void copy_weights(MoeDlm& src, MoeDlm& dst) {
  torch::NoGradGuard ng;
  auto sp = src->named_parameters(true), dp = dst->named_parameters(true);
  for (auto& kv : dp) kv.value().copy_(sp[kv.key()]);
  auto sb = src->named_buffers(true), db = dst->named_buffers(true);
  for (auto& kv : db)
    if (sb.contains(kv.key())) kv.value().copy_(sb[kv.key()]);
}

// Read bandwidth of this machine now (GB/s): the median of 5 sums over a 512 MB buffer, with
// torch's threads. The floor a weight-streaming part is compared with.
double measure_stream_gbps() {
  auto buf = torch::ones({128LL << 20}, torch::kFloat32);
  std::vector<double> gbps;
  for (int i = 0; i < 5; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    volatile float s = buf.sum().item<float>();
    (void)s;
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    gbps.push_back(static_cast<double>(buf.numel() * 4) / sec / 1e9);
  }
  return median(gbps);
}

// Weight bytes per forward of the parts outside the routed experts.
struct PartBytes {
  double shared = 0, attention = 0, dense = 0, head = 0;
};
PartBytes part_bytes(MoeDlm& m) {
  PartBytes b;
  for (auto& mod : m->model->layers->children()) {
    auto layer = std::dynamic_pointer_cast<DecoderLayerImpl>(mod);
    b.attention += static_cast<double>(layer->attention->query_key_value->weight_bytes() +
                                       layer->attention->dense->weight_bytes());
    auto mlp_bytes = [](SwiGluMlp& mlp) {
      return static_cast<double>(mlp->gate_proj->weight_bytes() + mlp->up_proj->weight_bytes() +
                                 mlp->down_proj->weight_bytes());
    };
    if (!layer->dense_mlp.is_empty()) b.dense += mlp_bytes(layer->dense_mlp);
    if (!layer->moe_mlp.is_empty() && !layer->moe_mlp->shared_experts.is_empty())
      b.shared += mlp_bytes(layer->moe_mlp->shared_experts);
  }
  b.head = static_cast<double>(m->lm_head->weight_bytes());
  return b;
}

// Parameters of the synthetic model (built in bf16: 2 bytes each, and as many again for the
// expert-choice copy when it is measured).
int64_t synthetic_params(const ModelConfig& c) {
  const int64_t D = c.hidden_size, H = c.head_dim;
  const int64_t attn = D * (c.num_attention_heads + 2 * c.num_key_value_heads) * H + c.num_attention_heads * H * D;
  const int64_t moe = 3 * D * c.moe_intermediate_size * c.num_experts + 3 * D * c.shared_expert_intermediate_size +
                      c.num_experts * D;
  const int64_t dense_layers = c.first_k_dense_replace, moe_layers = c.num_hidden_layers - dense_layers;
  return 2 * c.vocab_size * D + c.num_hidden_layers * attn + dense_layers * 3 * D * c.intermediate_size +
         moe_layers * moe;
}

// Refuses a synthetic model that cannot be built in this machine's free memory (the kernel would
// kill the process part-way instead).
void check_synthetic_fits(int64_t moe_layers, int64_t vocab, bool with_ec) {
  const int64_t avail = prof::available_memory_bytes();
  auto need = [&](int64_t layers) {
    return (with_ec ? 4 : 2) * synthetic_params(synthetic_llada2_config(layers, vocab)) + (int64_t{1} << 30);
  };
  if (avail < 0 || need(moe_layers) <= avail) return;
  int64_t fit = moe_layers;
  while (fit > 1 && need(fit) > avail) --fit;
  const auto gib = [](int64_t b) { return std::to_string((b + (int64_t{1} << 29)) >> 30); };
  fail("", "--bench-synth-layers",
       std::to_string(moe_layers) + " MoE layers need about " + gib(need(moe_layers)) +
           " GiB (bf16" + std::string(with_ec ? ", and the expert-choice copy" : "") + "); " + gib(avail) + " GiB are available",
       need(fit) <= avail ? "use at most " + std::to_string(fit) : "free memory, or use --bench-synth-vocab 4096");
}

}  // namespace

ModelConfig synthetic_llada2_config(int64_t moe_layers, int64_t vocab) {
  ModelConfig c;
  c.arch = Arch::kLlada2Moe;
  c.hidden_size = 2048;
  c.num_attention_heads = 16;
  c.num_key_value_heads = 4;
  c.head_dim = 128;
  c.partial_rotary_factor = 0.5;
  c.rope_theta = 600000;
  c.intermediate_size = 5120;
  c.first_k_dense_replace = 1;
  c.num_hidden_layers = 1 + moe_layers;
  c.num_experts = 256;
  c.num_experts_per_tok = 8;
  c.moe_intermediate_size = 512;
  c.shared_expert_intermediate_size = 512;
  c.n_group = 8;
  c.topk_group = 4;
  c.score_function = ScoreFunction::kSigmoid;
  c.norm_topk_prob = true;
  c.routed_scaling_factor = 2.5;
  c.moe_router_enable_expert_bias = true;
  c.router_type = RouterType::kTokenChoice;
  c.vocab_size = vocab;
  c.mask_token_id = vocab - 1;
  c.eos_token_id = vocab - 2;
  c.pad_token_id = vocab - 2;
  c.max_position_embeddings = 8192;
  c.validate("synthetic LLaDA2.0-mini-shaped model");
  return c;
}

namespace {

// Fills t with N(0, std) drawn in f32 a chunk at a time (fast vectorized sampling, bounded memory).
void fill_normal(torch::Tensor t, double std) {
  auto flat = t.view({-1});
  constexpr int64_t kChunk = int64_t{1} << 25;
  for (int64_t i = 0; i < flat.numel(); i += kChunk) {
    const int64_t n = std::min(kChunk, flat.numel() - i);
    flat.narrow(0, i, n).copy_(torch::empty({n}, torch::kFloat32).normal_(0.0, std));
  }
}

// A model of config c with its parameters allocated in bf16 and left unwritten (no pages yet).
MoeDlm empty_bf16_model(const ModelConfig& c) {
  SkipWeightInit skip;
  compat::DefaultDtype bf16(torch::kBFloat16);
  return MoeDlm(c);
}

}  // namespace

MoeDlm make_synthetic_model(const ModelConfig& c, uint64_t seed) {
  torch::manual_seed(seed);
  // Built in bf16 directly (2 bytes a parameter; f32 then a cast peaked at 6): 8 MoE layers fit
  // in 24 GB. The init follows MoeDlm's (N(0, 0.02), output projections N(0, 0.02 / sqrt(2
  // layers)), norms 1) except the embeddings and the router below.
  MoeDlm m = empty_bf16_model(c);
  torch::NoGradGuard ng;
  for (auto& kv : m->named_parameters(true)) {
    if (ends_with(kv.key(), "word_embeddings.weight")) continue;  // below
    const auto init = param_init(kv.key(), c.num_hidden_layers);
    if (init.ones) kv.value().fill_(1.0);
    else fill_normal(kv.value(), init.std);
  }
  fill_normal(m->model->word_embeddings->weight, RoutingInit{}.embedding_std);
  for (auto& blk : m->moe_blocks()) init_synthetic_router(*blk);
  m->eval();
  return m;
}

void init_synthetic_router(moe::MoeBlockImpl& blk) {
  // f32, as in the reference (router math in fp32). The recipe and its calibration: RoutingInit.
  torch::NoGradGuard ng;
  const RoutingInit r;
  const auto E = blk.gate->weight.size(0), D = blk.gate->weight.size(1);
  blk.gate->weight.set_data(torch::empty({E, D}, torch::kFloat32).normal_(0.0, r.router_std(D)));
  blk.gate->expert_bias.set_data(popularity_bias(E, r.popularity_bias));
}

namespace {
std::string fmt2(double v) {
  std::ostringstream o;
  o << std::fixed << std::setprecision(2) << v;
  return o.str();
}
}  // namespace

std::vector<GenBenchRow> run_generate_bench(const GenBenchParams& p) {
  struct Model {
    std::string name;
    MoeDlm model{nullptr}, ec_model{nullptr};
    std::string weights = "bf16";
    int64_t min_experts = 16, topk_cap = 4;
    bool repack = false;  // products on output-lane copies (kernels/quant_repack.h); false with "+rows"
  };
  std::vector<Variant> variants = {{"token", 0, true},   {"token", 0, false}, {"block", 0.5, true},
                                   {"block", 0.6, true},  {"block", 0.6, false}, {"block", 0.6, true, true},
                                   {"block", 0.8, true},  {"topk", 0, true},     {"des-s", 0, true},
                                   {"des-v", 0, true},    {"ec", 0, true}};
  if (p.quick)
    variants = {{"token", 0, true}, {"token", 0, false}, {"block", 0.6, true}, {"topk", 0, true},
                {"des-s", 0, true}, {"des-v", 0, true},  {"ec", 0, true}};
  if (!p.policies.empty()) {
    std::vector<Variant> keep;
    for (const auto& v : variants)
      if (std::find(p.policies.begin(), p.policies.end(), v.routing) != p.policies.end()) keep.push_back(v);
    variants = keep;
  }
  if (!p.kv_cache.empty()) {
    std::vector<Variant> keep;
    for (const auto& v : variants)
      if (std::find(p.kv_cache.begin(), p.kv_cache.end(), v.kv ? "on" : "off") != p.kv_cache.end()) keep.push_back(v);
    variants = keep;
  }
  if (variants.empty())
    fail("", "--bench-kv-cache", "no variant measures these policies with the KV cache off",
         "uncached runs exist for token and block (p 0.6) routing; add 'on' or one of those policies");
  {
    std::vector<Variant> crossed;
    for (const auto& k : p.kernels) {
      const auto kernel = kernels::parse_small_m(k, "--bench-kernels");
      for (auto v : variants) {
        v.kernel = kernel;
        crossed.push_back(v);
      }
    }
    variants = crossed;
  }
  // Expert-choice copies only when measured (another 2 bytes a parameter for the synthetic one).
  const bool need_ec = std::any_of(variants.begin(), variants.end(), [](const Variant& v) { return v.routing == "ec"; });
  std::vector<Model> models;
  const double stream_gbps = measure_stream_gbps();
  LOG_INFO("bench generate: read bandwidth " << stream_gbps << " GB/s (the floor the parts are compared with)");
  if (!p.brown_model.empty()) {
    if (!std::filesystem::exists(std::filesystem::path(p.brown_model) / "config.json")) {
      LOG_WARN("bench generate: no Brown model at " << p.brown_model << " (train one with ecdlm train "
                                                    "--config configs/brown-small.json --moe-router tc); skipped");
    } else {
      Model mb{"brown-tc", load_model(p.brown_model), nullptr};
      const auto& c = mb.model->config();
      if (c.router_type != RouterType::kTokenChoice) {
        LOG_WARN("bench generate: " << p.brown_model << " is expert choice; block/topk routing need token choice; skipped");
      } else {
        if (need_ec) {
          auto ec_cfg = retrofit_config(c, RetrofitParams{});
          mb.ec_model = load_model(p.brown_model, &ec_cfg);
        }
        mb.min_experts = std::min<int64_t>(2 * c.num_experts_per_tok, c.num_experts);  // dMoE: G = 16 = 2k
        mb.topk_cap = std::max<int64_t>(1, c.num_experts_per_tok / 2);
        models.push_back(std::move(mb));
      }
    }
  }
  {
    const int64_t moe_layers = p.synth_moe_layers;
    check_synthetic_fits(moe_layers, p.synth_vocab, need_ec);
    auto cfg = synthetic_llada2_config(moe_layers, p.synth_vocab);
    const bool bf16 = p.quant.empty() || std::find(p.quant.begin(), p.quant.end(), "bf16") != p.quant.end();
    if (bf16) {
      Model ms{"synthetic-llada2", make_synthetic_model(cfg, p.seed), nullptr};
      if (need_ec) {
        auto ec_cfg = retrofit_config(cfg, RetrofitParams{});
        ms.ec_model = empty_bf16_model(ec_cfg);
        copy_weights(ms.model, ms.ec_model);
        ms.ec_model->eval();
      }
      models.push_back(std::move(ms));
    }
    for (const auto& q : p.quant) {
      if (q == "bf16") continue;
      // The same random weights (same seed), packed in place: the bf16 copy is freed as each
      // matrix is bound. Expert choice is not measured on quantized copies.
      Model mq{"synthetic-llada2", make_synthetic_model(cfg, p.seed), nullptr};
      QuantizeParams qp;
      // As the readers' --quant-repack auto on a model this size (and bench serve): the copies where
      // the quantized kernel is vnni (the one that reads them), the row layout with "+rows";
      // "+repack" asks for the copies.
      const auto rows = q.find("+rows"), rp = q.find("+repack");
      const auto cut = std::min(rows, rp);
      mq.repack = rp != std::string::npos ||
                  (rows == std::string::npos && kernels::is_vnni(kernels::quant_kernel_backend()));
      const auto qh = q.substr(0, cut);
      const auto plus = qh.find("+head");
      qp.lm_head = plus != std::string::npos;
      const auto f = qh.substr(0, plus);
      const auto us = f.find("_g");
      qp.format = f.substr(0, us);
      if (us != std::string::npos) qp.group = std::stoll(f.substr(us + 2));
      const int64_t n = quantize_model(*mq.model, qp);
      mq.weights = io::quant_format_name(quantize_format(qp)) + (qp.lm_head ? "+head" : "") + (mq.repack ? "" : "+rows");
      LOG_INFO("bench generate: " << mq.weights << " copy of the synthetic model, " << n << " weights packed");
      models.push_back(std::move(mq));
    }
  }
  const int64_t reps = p.reps, gen_length = p.gen_length, prompt_len = p.prompt_len;

  std::vector<GenBenchRow> rows;
  prof::set_enabled(true);
  ProgressBar bar("bench generate", static_cast<int64_t>(models.size() * variants.size()) * reps, "run");
  int64_t done = 0;
  for (auto& m : models) {
    const auto& cfg = m.model->config();
    // A fixed pseudo-random prompt of ordinary tokens (specials excluded).
    auto gen_ids = at::detail::createCPUGenerator(p.seed);
    auto prompt_t = torch::randint(4, std::min<int64_t>(cfg.vocab_size - 3, 30000), {prompt_len}, gen_ids, torch::kInt64);
    std::vector<int64_t> prompt(prompt_t.data_ptr<int64_t>(), prompt_t.data_ptr<int64_t>() + prompt_len);
    enum Col { kMs, kMoe, kAtt, kDense, kHead, kOther, kCols };
    std::vector<std::array<std::vector<double>, kCols>> cols(variants.size());
    std::vector<GenBenchRow> mrows(variants.size());
    kernels::set_quant_repack(m.repack);
    if (m.repack) {  // the copies before any timing: a first use inside a step copies single-threaded
      const auto t0 = std::chrono::steady_clock::now();
      const int64_t n = prepack_quantized(*m.model);
      LOG_INFO("bench generate: " << m.weights << ": " << n << " packed weights repacked in "
                                  << std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() << " s");
    }
    // Warm-up (allocator, oneDNN primitives) outside the measurement.
    {
      gen::ThresholdParams w;
      w.gen_length = p.block_length;
      w.block_length = p.block_length;
      w.steps = 2;
      w.eos_id = -2;
      gen::threshold_generate(m.model, prompt, w);
    }
    for (int64_t r = 0; r < reps; ++r) {
      for (size_t vi = 0; vi < variants.size(); ++vi) {
        const auto& v = variants[vi];
        gen::ThresholdParams tp;
        tp.gen_length = gen_length;
        tp.block_length = p.block_length;
        tp.steps = p.block_length;
        tp.threshold = 0.95;
        // Sampled at T = 1 so the output tokens are as varied as text (greedy decoding of random
        // weights repeats one token, which would understate the experts a block touches).
        tp.temperature = 1.0;
        tp.eos_id = -2;  // fixed work per variant: never stop early
        tp.kv_cache = v.kv;
        tp.seed = p.seed;
        if (v.routing == "ec" && m.ec_model.is_empty()) continue;  // quantized copies: no EC twin
        MoeDlm* model = &m.model;
        if (v.routing == "ec") {
          model = &m.ec_model;
        } else {
          tp.routing.policy = moe::parse_routing_policy(v.routing);
          tp.routing.block_top_p = v.top_p > 0 ? v.top_p : tp.routing.block_top_p;
          tp.routing.block_min_experts = v.paper_guard ? m.min_experts * 3 / 4 : m.min_experts;
          tp.routing.block_chunk = p.block_length;
          tp.routing.topk_cap = m.topk_cap;
          tp.routing.des_chunk = p.block_length;  // DES-S / DES-V: their default knobs (inference_routing.h)
        }
        kernels::set_small_m(v.kernel);
        prof::reset();
        auto res = gen::threshold_generate(*model, prompt, tp);
        std::array<double, kCols> sum{};
        double bytes = 0;
        for (const auto& f : res.per_forward) {
          sum[kMs] += f.ms;
          sum[kMoe] += f.router_ms + f.experts_ms;
          sum[kAtt] += f.attention_ms;
          sum[kDense] += f.dense_ms;
          sum[kHead] += f.head_ms;
          sum[kOther] += f.ms - f.router_ms - f.experts_ms - f.attention_ms - f.dense_ms - f.head_ms;
          bytes += f.expert_bytes;
        }
        const double n = std::max<double>(1.0, static_cast<double>(res.per_forward.size()));
        for (int c = 0; c < kCols; ++c) cols[vi][static_cast<size_t>(c)].push_back(sum[static_cast<size_t>(c)] / n);
        auto& row = mrows[vi];
        row.model = m.name;
        row.routing = v.routing;
        row.top_p = v.top_p;
        row.block_min_experts = v.routing == "block" ? tp.routing.block_min_experts : 0;
        row.kv_cache = v.kv;
        row.kernel = kernels::small_m_name(v.kernel);
        row.weights = m.weights;
        row.gen_length = gen_length;
        {
          const auto pb = part_bytes(*model);
          row.moe_bytes_per_forward = bytes / n + pb.shared;
          row.attention_bytes = pb.attention;
          row.dense_bytes = pb.dense;
          row.head_bytes = pb.head;
          row.stream_gbps = stream_gbps;
        }
        row.unique_experts_per_block = res.avg_unique_experts_per_layer;
        row.expert_bytes_per_forward = bytes / n;
        row.forwards = res.forwards + res.cache_forwards;
        row.tokens_per_forward = static_cast<double>(res.tokens.size()) / n;
        row.tokens_per_s_reps.push_back(static_cast<double>(res.tokens.size()) / res.seconds);
        bar.update(++done, m.name + " " + v.routing + (v.kv ? "" : " (no cache)") +
                               (p.kernels.size() > 1 ? std::string(" ") + kernels::small_m_name(v.kernel) : ""));
      }
    }
    for (size_t vi = 0; vi < variants.size(); ++vi) {
      auto& row = mrows[vi];
      if (row.tokens_per_s_reps.empty()) continue;  // skipped variant
      row.tokens_per_s = median(row.tokens_per_s_reps);
      row.ms_per_forward = median(cols[vi][kMs]);
      row.moe_ms_per_forward = median(cols[vi][kMoe]);
      row.attention_ms_per_forward = median(cols[vi][kAtt]);
      row.dense_ms_per_forward = median(cols[vi][kDense]);
      row.head_ms_per_forward = median(cols[vi][kHead]);
      row.other_ms_per_forward = median(cols[vi][kOther]);
      rows.push_back(row);
    }
  }
  bar.finish();
  prof::set_enabled(false);
  kernels::set_small_m(kernels::SmallM::kAuto);
  kernels::set_quant_repack(false);
  return rows;
}

std::vector<GenBenchCacheRatio> cache_ratios(const std::vector<GenBenchRow>& rows) {
  std::vector<GenBenchCacheRatio> out;
  for (const auto& off : rows) {
    if (off.kv_cache) continue;
    for (const auto& on : rows) {
      if (!on.kv_cache || on.model != off.model || on.routing != off.routing || on.top_p != off.top_p ||
          on.block_min_experts != off.block_min_experts ||
          on.kernel != off.kernel || on.weights != off.weights)
        continue;
      GenBenchCacheRatio c{off.model + (off.weights == "bf16" ? "" : " " + off.weights), off.routing, off.kernel, off.top_p, off.block_min_experts, off.gen_length, {}, 0};
      for (size_t r = 0; r < std::min(on.tokens_per_s_reps.size(), off.tokens_per_s_reps.size()); ++r)
        c.ratios.push_back(on.tokens_per_s_reps[r] / off.tokens_per_s_reps[r]);
      c.median = median(c.ratios);
      out.push_back(c);
    }
  }
  return out;
}

nlohmann::json to_json(const std::vector<GenBenchRow>& rows) {
  nlohmann::json arr = nlohmann::json::array(), kv = nlohmann::json::array();
  for (const auto& r : rows)
    arr.push_back({{"model", r.model}, {"routing", r.routing}, {"top_p", r.top_p},
                   {"block_min_experts", r.block_min_experts}, {"kv_cache", r.kv_cache},
                   {"kernel", r.kernel}, {"weights", r.weights}, {"gen_length", r.gen_length},
                   {"moe_bytes_per_forward", r.moe_bytes_per_forward}, {"attention_bytes", r.attention_bytes},
                   {"dense_bytes", r.dense_bytes}, {"head_bytes", r.head_bytes}, {"stream_gbps", r.stream_gbps},
                   {"ms_per_forward_at_moe_floor", step_ms_at_moe_floor(r)},
                   {"unique_experts_per_block", r.unique_experts_per_block},
                   {"expert_bytes_per_forward", r.expert_bytes_per_forward}, {"ms_per_forward", r.ms_per_forward},
                   {"moe_ms_per_forward", r.moe_ms_per_forward}, {"attention_ms_per_forward", r.attention_ms_per_forward},
                   {"dense_ms_per_forward", r.dense_ms_per_forward}, {"head_ms_per_forward", r.head_ms_per_forward},
                   {"other_ms_per_forward", r.other_ms_per_forward}, {"tokens_per_s", r.tokens_per_s},
                   {"tokens_per_s_reps", r.tokens_per_s_reps}, {"tokens_per_forward", r.tokens_per_forward},
                   {"forwards", r.forwards}});
  for (const auto& c : cache_ratios(rows))
    kv.push_back({{"model", c.model}, {"routing", c.routing}, {"kernel", c.kernel}, {"top_p", c.top_p},
                  {"block_min_experts", c.block_min_experts}, {"gen_length", c.gen_length},
                  {"speedup_median", c.median}, {"speedup_reps", c.ratios}});
  return {{"results", arr}, {"kv_cache_speedup", kv}};
}

double step_ms_at_moe_floor(const GenBenchRow& r) {
  if (r.stream_gbps <= 0 || r.moe_bytes_per_forward <= 0 || r.ms_per_forward <= 0) return 0;
  return r.ms_per_forward - r.moe_ms_per_forward + r.moe_bytes_per_forward / r.stream_gbps / 1e6;
}

std::string to_markdown(const std::vector<GenBenchRow>& rows, const GenBenchParams& p) {
  std::ostringstream o;
  o << std::fixed;
  // The weights and "vs bf16" columns only when quantized rows are present (--bench-quant).
  const bool quant = std::any_of(rows.begin(), rows.end(), [](const GenBenchRow& r) { return r.weights != "bf16"; });
  o << "| model | " << (quant ? "weights | " : "")
    << "routing | KV cache | kernel | unique experts / block | expert MB / forward | ms / forward | MoE | "
       "attention | dense | LM head | other | tokens/s | vs token (cache) |"
    << (quant ? " vs bf16 |" : "") << "\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    << (quant ? "---|---|" : "") << "\n";
  auto same = [](const GenBenchRow& a, const GenBenchRow& b) {
    return a.model == b.model && a.routing == b.routing && a.top_p == b.top_p && a.kv_cache == b.kv_cache &&
           a.kernel == b.kernel && a.block_min_experts == b.block_min_experts;
  };
  // The bf16 row of r's variant (for the "vs bf16" columns), if the run has one.
  auto bf16_of = [&](const GenBenchRow& r) -> const GenBenchRow* {
    for (const auto& b : rows)
      if (same(b, r) && b.weights == "bf16") return &b;
    return nullptr;
  };
  for (const auto& r : rows) {
    double base = 0;
    for (const auto& b : rows)
      if (b.model == r.model && b.routing == "token" && b.kv_cache && b.kernel == r.kernel && b.weights == r.weights)
        base = b.tokens_per_s;
    const auto* b16 = bf16_of(r);
    const double bf16 = b16 ? b16->tokens_per_s : 0.0;
    o << "| " << r.model << " | " << (quant ? r.weights + " | " : "")
      << policy_label(r.routing, r.top_p, r.block_min_experts) << " | " << (r.kv_cache ? "on" : "off") << " | "
      << r.kernel << " | " << std::setprecision(1) << r.unique_experts_per_block << " | "
      << r.expert_bytes_per_forward / 1048576.0 << " | " << std::setprecision(2) << r.ms_per_forward << " | "
      << r.moe_ms_per_forward << " | " << r.attention_ms_per_forward << " | " << r.dense_ms_per_forward << " | "
      << r.head_ms_per_forward << " | " << r.other_ms_per_forward << " | " << std::setprecision(1) << r.tokens_per_s
      << " | " << (base > 0 ? fmt2(r.tokens_per_s / base) + "x" : std::string("-")) << " |";
    if (quant) o << " " << (bf16 > 0 && r.weights != "bf16" ? fmt2(r.tokens_per_s / bf16) + "x" : std::string("-")) << " |";
    o << "\n";
  }
  // Each part's weight bytes over its time, beside the read bandwidth measured in this run; and
  // the forward with its MoE streamed at that bandwidth and every other part as measured: what a
  // faster expert kernel alone could give (the rest of a 32-token step is arithmetic, not bytes).
  if (!rows.empty() && rows[0].stream_gbps > 0) {
    o << "\nWeight streaming per part (GB/s = weight bytes per forward / ms per forward; read bandwidth "
      << std::setprecision(1) << rows[0].stream_gbps << " GB/s measured in this run; MoE floor = the MoE's bytes at that bandwidth, "
      << "the other parts as measured):\n\n"
      << "| model | weights | routing | KV cache | MoE MB | MoE GB/s | attention MB | attention GB/s | dense MB | "
         "dense GB/s | LM head MB | LM head GB/s | ms / forward at the MoE floor |"
      << (quant ? " vs bf16 at the MoE floor |" : "") << "\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
      << (quant ? "---|" : "") << "\n";
    auto gbps = [](double bytes, double ms) { return ms > 0 && bytes > 0 ? fmt2(bytes / ms / 1e6) : std::string("-"); };
    for (const auto& r : rows) {
      if (r.routing == "ec") continue;
      const double floor_ms = step_ms_at_moe_floor(r);
      const auto* b16 = bf16_of(r);
      const double bf16_ms = b16 ? b16->ms_per_forward : 0.0;
      o << "| " << r.model << " | " << r.weights << " | " << policy_label(r.routing, r.top_p, r.block_min_experts)
        << " | " << (r.kv_cache ? "on" : "off") << " | " << std::setprecision(1) << r.moe_bytes_per_forward / 1e6
        << " | " << gbps(r.moe_bytes_per_forward, r.moe_ms_per_forward) << " | " << r.attention_bytes / 1e6 << " | "
        << gbps(r.attention_bytes, r.attention_ms_per_forward) << " | " << r.dense_bytes / 1e6 << " | "
        << gbps(r.dense_bytes, r.dense_ms_per_forward) << " | " << r.head_bytes / 1e6 << " | "
        << gbps(r.head_bytes, r.head_ms_per_forward) << " | " << (floor_ms > 0 ? fmt2(floor_ms) : std::string("-"))
        << " |";
      if (quant)
        o << " "
          << (floor_ms > 0 && bf16_ms > 0 && r.weights != "bf16" ? fmt2(bf16_ms / floor_ms) + "x" : std::string("-"))
          << " |";
      o << "\n";
    }
  }
  const auto kv = cache_ratios(rows);
  if (!kv.empty()) {
    o << "\nKV cache speedup (tokens/s on / off, paired per repetition):\n\n| model | routing | kernel | "
         "generated tokens | speedup (median) | per repetition |\n|---|---|---|---|---|---|\n";
    for (const auto& c : kv) {
      o << "| " << c.model << " | " << policy_label(c.routing, c.top_p, c.block_min_experts) << " | " << c.kernel << " | " << c.gen_length << " | " << std::setprecision(2)
        << c.median << "x |";
      for (size_t i = 0; i < c.ratios.size(); ++i) o << (i ? ", " : " ") << c.ratios[i];
      o << " |\n";
    }
  }
  (void)p;
  return o.str();
}

}  // namespace ecdlm::bench
