// The `bench generate` plot: MoE time per forward against unique experts per block, one labelled
// point per routing policy (cache on), and a line only through an ordered sweep (block p).
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "ecdlm/bench/generate_bench.h"
#include "ecdlm/util/plot.h"

namespace ecdlm::bench {

// "token", "block p=0.6 G=16", "topk", ... (the markdown table's routing column).
std::string policy_label(const std::string& routing, double top_p, int64_t block_min_experts);

// Per model: a points series labelled by policy (the kernel joins the label when several ran), and
// per block-routing group (same G and kernel) with two or more p values a line sorted by p.
std::vector<Series> plot_series(const std::vector<GenBenchRow>& rows);

// Writes the plot; false if gnuplot is missing (the .gp script is still written).
bool plot_generate(const std::vector<GenBenchRow>& rows, const std::string& png);

// The inverse of to_json's "results" (for `ecdlm plot --bench-generate`); names the field at fault.
std::vector<GenBenchRow> rows_from_json(const nlohmann::json& j, const std::string& source);

}  // namespace ecdlm::bench
