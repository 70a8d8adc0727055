// ecdlm: train, adapt and run Mixture-of-Experts masked-diffusion language models.
#include <torch/torch.h>

#include <sched.h>

#include <iostream>
#include <map>
#include <thread>

#include "commands.h"
#include "ecdlm/dist/process_group.h"
#include "ecdlm/util/compat.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/huge_pages.h"
#include "ecdlm/util/log.h"
#include "ecdlm/util/progress.h"

namespace ecdlm::cli {
namespace {
std::map<CLI::App*, Runner>& runners() {
  static std::map<CLI::App*, Runner> r;
  return r;
}
}  // namespace

void set_runner(CLI::App* sub, Runner run) { runners()[sub] = std::move(run); }

Runner runners_lookup(CLI::App* sub) {
  auto it = runners().find(sub);
  return it == runners().end() ? Runner{} : it->second;
}

GlobalOptions& global_options() {
  static GlobalOptions g;
  return g;
}

static int available_cpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

void apply_global_options() {
  auto& g = global_options();
  if (g.quiet) {
    set_log_level(LogLevel::kWarn);
    ProgressBar::set_enabled(false);
  }
  if (g.verbose) set_log_level(LogLevel::kDebug);
  // More threads than CPUs only adds contention, and OpenMP starting 10^5 of them never returns:
  // cap before torch starts its pool (and before `experiment` passes the count on).
  const int cpus = available_cpus();
  if (g.threads > cpus) {
    LOG_WARN("--threads " << g.threads << " exceeds the " << cpus
                          << " CPUs this process may run on; using " << cpus);
    g.threads = cpus;
  }
  // libtorch defaults to one intra-op thread; use every core unless told otherwise. Ranks started
  // together on one machine (LOCAL_WORLD_SIZE of them) share its cores instead of oversubscribing.
  const int local_ranks = ecdlm::dist::DistEnv::from_environment().local_world_size;
  torch::set_num_threads(g.threads > 0 ? g.threads : std::max(1, cpus / local_ranks));
  static bool checked = false;
  if (!checked) {
    checked = true;
    if (g.huge_pages) huge_pages::install();
    LOG_DEBUG("huge pages for tensors >= 4 MiB: " << (g.huge_pages ? "on" : "off") << " (THP "
                                                  << huge_pages::thp_mode() << "), freed blocks kept up to "
                                                  << (huge_pages::cache_limit() >> 20) << " MiB");
    std::string blas = compat::detect_blas();
    if (blas == "reference")
      LOG_WARN("libtorch is running on the reference BLAS (about 30x slower): "
               "install libopenblas0-openmp (scripts/setup.sh does)");
    LOG_DEBUG("libtorch " << compat::torch_version() << ", BLAS " << blas << ", threads "
                          << torch::get_num_threads());
  }
}

}  // namespace ecdlm::cli

namespace ecdlm::cli {
void register_launch(CLI::App& app);  // cmd_launch.cpp (declared here: commands.h is in every command)
void register_serve(CLI::App& app);   // cmd_serve.cpp (likewise)
}  // namespace ecdlm::cli

int main(int argc, char** argv) {
  using namespace ecdlm::cli;
  ecdlm::huge_pages::tune_malloc();  // before the first large allocation
  CLI::App app{"ecdlm: train, adapt and run Mixture-of-Experts masked-diffusion language models"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Show help for all subcommands");
  // Global flags are also accepted after the subcommand (`ecdlm generate ... --threads 2`):
  // subcommands inherit this and hand flags they do not know to the root.
  app.fallthrough();
  auto& g = global_options();
  app.add_option("--threads", g.threads, "Intra-op threads (0 = all cores, divided among the ranks on one machine)")->check(CLI::NonNegativeNumber);
  app.add_flag("-q,--quiet", g.quiet, "Only warnings and errors on stderr");
  app.add_flag("-v,--verbose", g.verbose, "Debug logging");
  app.add_option("--huge-pages", g.huge_pages,
                 "Allocate CPU tensors of 4 MiB or more on 2 MB transparent huge pages (true/false)")
      ->default_str("true");

  register_prepare_data(app);
  register_train(app);
  register_eval(app);
  register_generate(app);
  register_logits(app);
  register_info(app);
  register_bench(app);
  register_plot(app);
  register_schedule(app);
  register_analyze(app);
  register_retrofit(app);
  register_experiment(app);
  register_tokenize(app);
  register_convert(app);
  register_launch(app);
  register_serve(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // Help/version exit 0; every bad flag exits 2, like every other bad input.
    return app.exit(e) == 0 ? 0 : 2;
  }
  try {
    apply_global_options();
    for (auto* sub : app.get_subcommands()) {
      auto it = [&]() {
        // Nested subcommands (e.g. `bench train`) register on the innermost app.
        CLI::App* cur = sub;
        while (!cur->get_subcommands().empty()) cur = cur->get_subcommands().front();
        return cur;
      }();
      auto r = ecdlm::cli::runners_lookup(it);
      if (r) return r();
    }
    std::cerr << "ecdlm: no runnable subcommand selected (see --help)\n";
    return 2;
  } catch (const ecdlm::UserError& e) {
    std::cerr << "ecdlm: error: " << e.what() << "\n";
    return 2;
  } catch (const std::bad_alloc&) {
    // A size from a flag or config beyond this machine (a batch of 10^12, a model of 10^9 experts).
    std::cerr << "ecdlm: error: out of memory: a size given on the command line or in a config needs more "
                 "memory than this machine has (fix: lower it: batch size, --num-samples, --gen-length, "
                 "or the model's config)\n";
    return 2;
  } catch (const c10::Error& e) {
    std::cerr << "ecdlm: internal tensor error: " << e.what_without_backtrace() << "\n";
    return 3;
  } catch (const std::exception& e) {
    std::cerr << "ecdlm: error: " << e.what() << "\n";
    return 3;
  }
}
