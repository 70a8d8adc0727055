// `ecdlm bench train`: EC vs TC-dropless vs TC-cf1.25 training throughput on one model size,
// side by side in one process, with the GEMM peak of the compute dtype measured in the same run.
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "ecdlm/model/config.h"
#include "ecdlm/train/train_params.h"

namespace ecdlm::bench {

struct TrainBenchParams {
  std::vector<std::string> variants = {"ec", "tc-dropless", "tc-cf1.25"};
  int64_t warmup_steps = 2;
  int64_t steps = 4;       // optimizer steps per repetition
  int64_t reps = 3;        // repetitions; variants interleaved, median reported
};

struct TrainBenchRow {
  std::string variant;
  double tokens_per_s = 0.0;              // median over repetitions
  std::vector<double> tokens_per_s_reps;
  double model_flops_per_s = 0.0;         // 3 x forward FLOPs/token (active k) x tokens/s
  double gemm_peak_flops_per_s = 0.0;     // matmul peak in the compute dtype, same run
  double sgemm_fp32_peak_flops_per_s = 0.0;
  double load_cv = 0.0, drop_rate = 0.0;
};

// `base`: the model config (router fields are replaced per variant); `tp`: batch/seq/bf16/lr.
std::vector<TrainBenchRow> run_train_bench(const ModelConfig& base, const TrainParams& tp,
                                           const TrainBenchParams& bp);

// Peak matmul FLOP/s for dtype (median of several [2048 x 1024] x [1024 x 1024] products).
double measure_gemm_peak(torch::ScalarType dtype);

nlohmann::json to_json(const std::vector<TrainBenchRow>& rows);
std::string to_markdown(const std::vector<TrainBenchRow>& rows, const ModelConfig& base,
                        const TrainParams& tp);

}  // namespace ecdlm::bench
