#include "ecdlm/bench/train_bench.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <iomanip>
#include <sstream>

#include "ecdlm/data/batcher.h"
#include "ecdlm/data/shards.h"
#include "ecdlm/model/checkpoint.h"
#include "ecdlm/train/trainer.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/log.h"
#include "ecdlm/util/stats.h"

namespace ecdlm::bench {
using Clock = std::chrono::steady_clock;

namespace {

ModelConfig variant_config(const ModelConfig& base, const std::string& v) {
  ModelConfig c = base;
  if (v == "ec") {
    c.router_type = RouterType::kExpertChoice;
    c.moe_capacity_factor = 0.0;
    c.moe_aux_loss_coeff = 0.0;
  } else if (v == "tc-dropless" || v.rfind("tc-cf", 0) == 0) {
    c.router_type = RouterType::kTokenChoice;
    c.moe_capacity_factor = v == "tc-dropless" ? 0.0 : std::stod(v.substr(5));
    c.moe_aux_loss_coeff = 0.01;
    apply_tc_scaling_factor(c);
  } else {
    fail("", "--variants", "unknown variant '" + v + "'", "use ec, tc-dropless or tc-cf<factor>");
  }
  return c;
}

}  // namespace

double measure_gemm_peak(torch::ScalarType dtype) {
  torch::NoGradGuard ng;
  auto a = torch::randn({2048, 1024}).to(dtype);
  auto b = torch::randn({1024, 1024}).to(dtype);
  for (int i = 0; i < 3; ++i) (void)torch::matmul(a, b);
  std::vector<double> rates;
  for (int r = 0; r < 7; ++r) {
    auto t0 = Clock::now();
    for (int i = 0; i < 4; ++i) (void)torch::matmul(a, b);
    double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    rates.push_back(4.0 * 2.0 * 2048.0 * 1024.0 * 1024.0 / dt);
  }
  return *std::max_element(rates.begin(), rates.end());
}

std::vector<TrainBenchRow> run_train_bench(const ModelConfig& base, const TrainParams& tp,
                                           const TrainBenchParams& bp) {
  struct Slot {
    TrainBenchRow row;
    MoeDlm model{nullptr};
    std::unique_ptr<torch::optim::AdamW> opt;
    moe::RoutingSummary routing;
  };
  std::vector<Slot> slots;
  for (const auto& v : bp.variants) {
    Slot s;
    s.row.variant = v;
    auto cfg = variant_config(base, v);
    cfg.validate("bench config (" + v + ")");
    torch::manual_seed(tp.seed);
    s.model = MoeDlm(cfg);
    // Routing cost depends on the routing state: a trained checkpoint gives realistic loads
    // (at random init, TC routing collapses onto a few experts).
    if (!tp.init_from.empty()) load_weights(s.model, io::SafetensorsSet::open(tp.init_from));
    s.model->train();
    s.opt = make_optimizer(s.model, tp);
    slots.push_back(std::move(s));
  }
  const auto& c0 = slots.front().model->config();
  auto gen = at::detail::createCPUGenerator(tp.seed);
  // Real text when a prepared data dir matches the model's vocabulary (routing depends on it),
  // else random tokens (never the mask id).
  std::unique_ptr<data::BatchSampler> sampler;
  if (std::filesystem::exists(tp.data_dir + "/meta.json")) {
    auto shard = data::TokenShard::open(tp.data_dir, "train");
    if (shard.vocab_size() == c0.vocab_size)
      sampler = std::make_unique<data::BatchSampler>(shard, tp.batch_size, tp.seq_len, tp.seed);
  }
  LOG_INFO("bench train: batches from " << (sampler ? tp.data_dir : std::string("random tokens"))
                                        << (tp.init_from.empty() ? ", random init" : ", weights " + tp.init_from));
  auto batch = [&] {
    if (sampler) return sampler->next();
    return torch::randint(0, c0.vocab_size - 1, {tp.batch_size, tp.seq_len}, gen, torch::kInt64);
  };
  auto one_step = [&](Slot& s, int64_t step, bool record) {
    std::vector<torch::Tensor> micro;
    for (int64_t m = 0; m < tp.grad_accum; ++m) micro.push_back(batch());
    s.opt->zero_grad();
    forward_backward(s.model, micro, step, tp, record ? &s.routing : nullptr);
    s.opt->step();
  };
  for (auto& s : slots)
    for (int64_t i = 0; i < bp.warmup_steps; ++i) one_step(s, i, false);
  const double tokens_per_step = static_cast<double>(tp.batch_size * tp.seq_len * tp.grad_accum);
  for (int64_t r = 0; r < bp.reps; ++r) {
    for (auto& s : slots) {
      auto t0 = Clock::now();
      for (int64_t i = 0; i < bp.steps; ++i) one_step(s, bp.warmup_steps + r * bp.steps + i, true);
      double dt = std::chrono::duration<double>(Clock::now() - t0).count();
      s.row.tokens_per_s_reps.push_back(tokens_per_step * bp.steps / dt);
      LOG_INFO("bench train: " << s.row.variant << " rep " << r + 1 << "/" << bp.reps << ": "
                               << static_cast<int64_t>(s.row.tokens_per_s_reps.back()) << " tokens/s");
    }
  }
  const double peak = measure_gemm_peak(tp.bf16 ? torch::kBFloat16 : torch::kFloat32);
  const double peak32 = tp.bf16 ? measure_gemm_peak(torch::kFloat32) : peak;
  std::vector<TrainBenchRow> rows;
  for (auto& s : slots) {
    s.row.tokens_per_s = median(s.row.tokens_per_s_reps);
    s.row.model_flops_per_s = 3.0 * s.model->forward_flops_per_token(tp.seq_len) * s.row.tokens_per_s;
    s.row.gemm_peak_flops_per_s = peak;
    s.row.sgemm_fp32_peak_flops_per_s = peak32;
    auto rs = s.routing.averaged();
    s.row.load_cv = rs.load_cv;
    s.row.drop_rate = rs.drop_rate;
    rows.push_back(s.row);
  }
  return rows;
}

nlohmann::json to_json(const std::vector<TrainBenchRow>& rows) {
  nlohmann::json arr = nlohmann::json::array();
  for (const auto& r : rows)
    arr.push_back({{"variant", r.variant}, {"tokens_per_s", r.tokens_per_s},
                   {"tokens_per_s_reps", r.tokens_per_s_reps},
                   {"model_flops_per_s", r.model_flops_per_s},
                   {"sgemm_peak_flops_per_s", r.gemm_peak_flops_per_s},
                   {"fp32_sgemm_peak_flops_per_s", r.sgemm_fp32_peak_flops_per_s},
                   {"load_cv", r.load_cv}, {"drop_rate", r.drop_rate}});
  return {{"results", arr}};
}

std::string to_markdown(const std::vector<TrainBenchRow>& rows, const ModelConfig& c,
                        const TrainParams& tp) {
  std::ostringstream os;
  os << "Model: " << c.num_hidden_layers << " layers, hidden " << c.hidden_size << ", " << c.num_experts
     << " experts x " << c.moe_intermediate_size << " (k=" << c.num_experts_per_tok << "), shared "
     << c.shared_expert_intermediate_size << ", vocab " << c.vocab_size << "; batch " << tp.batch_size
     << " x " << tp.seq_len << ", " << (tp.bf16 ? "bf16 autocast" : "fp32") << ".\n\n";
  os << "| variant | tokens/s (median) | vs EC | model TFLOP/s | % of GEMM peak | load CV | drop rate |\n";
  os << "|---|---|---|---|---|---|---|\n";
  double ec = 0;
  for (const auto& r : rows)
    if (r.variant == "ec") ec = r.tokens_per_s;
  for (const auto& r : rows) {
    os << "| " << r.variant << " | " << std::fixed << std::setprecision(0) << r.tokens_per_s << " | "
       << std::setprecision(2) << (ec > 0 ? r.tokens_per_s / ec : 0.0) << "x | " << std::setprecision(3)
       << r.model_flops_per_s / 1e12 << " | " << std::setprecision(1)
       << 100.0 * r.model_flops_per_s / r.gemm_peak_flops_per_s << "% | " << std::setprecision(3)
       << r.load_cv << " | " << r.drop_rate << " |\n";
  }
  if (!rows.empty())
    os << "\nGEMM peak (" << (tp.bf16 ? "bf16" : "fp32") << ", same run): " << std::setprecision(1)
       << rows[0].gemm_peak_flops_per_s / 1e9 << " GFLOP/s; fp32 sgemm: "
       << rows[0].sgemm_fp32_peak_flops_per_s / 1e9 << " GFLOP/s.\n";
  return os.str();
}

}  // namespace ecdlm::bench
