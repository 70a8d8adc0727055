// Each subcommand lives in its own cmd_*.cpp and registers itself on the root app.
#pragma once
#include <CLI/CLI.hpp>

#include <cmath>
#include <cstdlib>
#include <functional>
#include <string>

namespace ecdlm::cli {

// CLI11's numeric validators (Range, PositiveNumber, NonNegativeNumber) let "nan" through, as every
// comparison with NaN is false, and PositiveNumber lets "inf" through: chain this on float options.
inline const CLI::Validator Finite(
    [](std::string& s) {
      char* end = nullptr;
      const double v = std::strtod(s.c_str(), &end);
      return end != s.c_str() && *end == '\0' && !std::isfinite(v) ? "must be a finite number, got " + s
                                                                     : std::string();
    },
    "FINITE");

// The callback runs after parsing; it returns the process exit code.
using Runner = std::function<int()>;

// Registers a subcommand; `run` is called when it is selected.
void set_runner(CLI::App* sub, Runner run);
Runner runners_lookup(CLI::App* sub);

void register_prepare_data(CLI::App& app);
void register_train(CLI::App& app);
void register_eval(CLI::App& app);
void register_generate(CLI::App& app);
void register_logits(CLI::App& app);
void register_info(CLI::App& app);
void register_bench(CLI::App& app);
void register_plot(CLI::App& app);
void register_schedule(CLI::App& app);
void register_analyze(CLI::App& app);
void register_retrofit(CLI::App& app);
void register_experiment(CLI::App& app);
void register_bench_generate(CLI::App* bench);  // under `bench`
void register_tokenize(CLI::App& app);
void register_convert(CLI::App& app);  // convert, export, init

// Common set-up for every command: threads, BLAS check, log level.
struct GlobalOptions {
  int threads = 0;  // 0 = all cores
  bool quiet = false;
  bool verbose = false;
  bool huge_pages = true;  // large CPU tensors on 2 MB pages (util/huge_pages.h)
};
GlobalOptions& global_options();
void apply_global_options();

}  // namespace ecdlm::cli
