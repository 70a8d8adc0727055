// ecdlm bench dist: data-parallel training throughput on this machine, side by side in one run:
// 1 rank x T threads against T ranks x 1 thread (ecdlm launch), the same model and global batch;
// plus the gradient all-reduce's bytes and exposed wait per step (from rank 0's metrics). With
// --dist-ep EP, a third setup: the same ranks expert parallel (train --dist-ep EP), with the
// all_to_all bytes and seconds per step (and with --bench-ep-f32-payload a fourth: f32 dispatch rows).
// --bench-ec-model / --bench-tc-model: the expert-parallel scaling model (bench/dist_model.h).
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "commands.h"
#include "ecdlm/bench/dist_model.h"
#include "ecdlm/train/metrics.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/fs.h"
#include "ecdlm/util/log.h"
#include "ecdlm/util/stats.h"

namespace ecdlm::cli {
namespace fs = std::filesystem;

namespace {

struct BenchDistArgs {
  std::string config = "configs/brown-small.json", data, out_md, work_dir;
  int64_t ranks = 2, steps = 8, reps = 3, batch = 16, seq_len = 256, ep = 1;  // the main job's global batch (configs/brown-small.json)
  bool json = false, ep_f32_payload = false;
  bench::EpModelParams model;  // with --bench-ec-model and --bench-tc-model: the EP scaling model instead
  std::string plot;
};

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

struct RunStats {
  std::vector<double> tps, ar_bytes, ar_wait_s, a2a_bytes, a2a_s;
};

// Windows of log_every steps after the first one (warm-up), from a run's metrics.jsonl.
void collect(const std::string& out_dir, RunStats& s) {
  bool first = true;
  for (const auto& l : read_metrics((fs::path(out_dir) / "metrics.jsonl").string())) {
    if (!l.contains("tokens_per_s")) continue;
    if (first) {
      first = false;
      continue;
    }
    s.tps.push_back(l["tokens_per_s"].get<double>());
    if (l.contains("dist")) {
      s.ar_bytes.push_back(l["dist"]["allreduce_bytes"].get<double>());
      s.ar_wait_s.push_back(l["dist"]["allreduce_wait_s"].get<double>());
      if (l["dist"].contains("alltoall_bytes")) {
        s.a2a_bytes.push_back(l["dist"]["alltoall_bytes"].get<double>());
        s.a2a_s.push_back(l["dist"]["alltoall_wait_s"].get<double>());
      }
    }
  }
}

int run_bench_dist(const BenchDistArgs& a) {
  if (a.data.empty() || !fs::exists(fs::path(a.data) / "meta.json"))
    fail(a.data, "--data", "not a prepared data directory",
         "run `ecdlm prepare-data --source brown --out DIR` and pass --data DIR");
  // Bad flags fail before the work dir exists (nothing left behind).
  if (a.ep < 1 || a.ranks % a.ep != 0)
    fail("", "--dist-ep", std::to_string(a.ep) + " does not divide --bench-ranks " + std::to_string(a.ranks),
         "a divisor of the rank count, e.g. --dist-ep " + std::to_string(a.ranks));
  if (a.ep_f32_payload && a.ep <= 1)
    fail("", "--bench-ep-f32-payload", "compares expert-parallel payloads, but no --dist-ep is given",
         "add --dist-ep " + std::to_string(a.ranks) + " (or drop the flag)");
  char exe[4096];
  const ssize_t n = ::readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n <= 0) fail("/proc/self/exe", "", "cannot find this binary");
  exe[n] = '\0';
  const std::string work = a.work_dir.empty() ? (fs::temp_directory_path() / ("ecdlm-bench-dist." + std::to_string(::getpid()))).string()
                                              : a.work_dir;
  fs::create_directories(work);
  std::ostringstream train;
  train << " -q train --config " << quote(a.config) << " --data " << quote(a.data) << " --samples 0"
        << " --train-steps " << a.steps << " --train-batch-size " << a.batch << " --train-seq-len " << a.seq_len
        << " --train-log-every 2 --train-eval-every 0 --train-save-every 0 --eval-windows 1 --eval-mask-samples 1"
        << " --train-warmup 2";
  // The setups, alternated within each rep so load from other work on the machine hits all alike.
  struct Setup {
    std::string name, label, args;  // args: after the binary (threads, launch, extra train flags)
    RunStats st;
  };
  const std::string rk = std::to_string(a.ranks), launch = " launch --nproc-per-node " + rk + " -- --threads 1";
  std::vector<Setup> setups = {{"threads", "1 rank x " + rk + " threads", " --threads " + rk, {}},
                               {"ranks", rk + " ranks x 1 thread, data parallel", launch, {}}};
  if (a.ep > 1) {
    const std::string ep = std::to_string(a.ep);
    setups.push_back({"ep", rk + " ranks x 1 thread, --dist-ep " + ep, launch, {}});
    if (a.ep_f32_payload)
      setups.push_back({"ep-f32", rk + " ranks x 1 thread, --dist-ep " + ep + " --dist-ep-f32-payload", launch, {}});
  }
  for (int64_t rep = 0; rep < a.reps; ++rep) {
    for (auto& su : setups) {
      const std::string out = (fs::path(work) / (su.name + "-" + std::to_string(rep))).string();
      fs::remove_all(out);
      std::ostringstream cmd;
      cmd << quote(exe) << su.args << train.str() << " --out " << quote(out);
      if (su.name.rfind("ep", 0) == 0) cmd << " --dist-ep " << a.ep;
      if (su.name == "ep-f32") cmd << " --dist-ep-f32-payload";
      cmd << " > " << quote(out + ".log") << " 2>&1";
      LOG_INFO("bench dist: " << su.label << ", rep " << rep + 1 << "/" << a.reps);
      if (std::system(cmd.str().c_str()) != 0)
        fail(out + ".log", "", "the benchmarked run failed", "see the log");
      collect(out, su.st);
    }
  }
  if (a.work_dir.empty()) fs::remove_all(work);
  const auto med = [](const std::vector<double>& v) { return v.empty() ? 0.0 : median(v); };
  const double t1 = med(setups[0].st.tps), tn = med(setups[1].st.tps);
  const double ratio = t1 > 0 ? tn / t1 : 0.0;
  nlohmann::json j = {{"config", a.config}, {"batch", a.batch}, {"seq_len", a.seq_len}, {"steps", a.steps},
                      {"reps", a.reps}, {"ranks", a.ranks},
                      {"one_rank_tokens_per_s", t1}, {"ranks_tokens_per_s", tn}, {"ratio", ratio},
                      {"allreduce_bytes_per_step", med(setups[1].st.ar_bytes)},
                      {"allreduce_wait_s_per_step", med(setups[1].st.ar_wait_s)}};
  for (size_t i = 2; i < setups.size(); ++i) {
    const auto& st = setups[i].st;
    const std::string k = setups[i].name == "ep" ? "ep_" : "ep_f32_payload_";
    j["dist_ep"] = a.ep;
    j[k + "tokens_per_s"] = med(st.tps);
    j[k + "ratio"] = t1 > 0 ? med(st.tps) / t1 : 0.0;
    j[k + "allreduce_bytes_per_step"] = med(st.ar_bytes);
    j[k + "allreduce_wait_s_per_step"] = med(st.ar_wait_s);
    j[k + "alltoall_bytes_per_step"] = med(st.a2a_bytes);
    j[k + "alltoall_s_per_step"] = med(st.a2a_s);
  }
  // One row per setup, side by side; per step: rank 0's bytes sent and seconds waited.
  std::ostringstream md;
  md << "| setup | tokens/s | vs 1 rank | all-reduce MB/step | all-reduce wait ms/step | all_to_all MB/step "
        "| all_to_all ms/step |\n|---|---:|---:|---:|---:|---:|---:|\n";
  for (const auto& su : setups) {
    const auto& st = su.st;
    const double t = med(st.tps);
    md << "| " << su.label << " | " << static_cast<int64_t>(t) << " | " << std::fixed << std::setprecision(2)
       << (t1 > 0 ? t / t1 : 0.0) << "x | ";
    if (st.ar_bytes.empty()) md << "- | - | ";
    else md << std::setprecision(2) << med(st.ar_bytes) / 1e6 << " | " << std::setprecision(1) << 1e3 * med(st.ar_wait_s) << " | ";
    if (st.a2a_bytes.empty()) md << "- | - |\n";
    else md << std::setprecision(2) << med(st.a2a_bytes) / 1e6 << " | " << std::setprecision(1) << 1e3 * med(st.a2a_s) << " |\n";
  }
  md << "\nAll-reduce: the gradients averaged over the ranks (expert parallel: the dense parameters; the "
        "expert shards only over their replicas), the wait left after backward. all_to_all: the token "
        "rows rank 0 sent to other ranks (dispatch and return, forward and backward, every MoE layer) and "
        "the seconds in those exchanges.\n"
     << "Model " << a.config << ", global batch " << a.batch << " x " << a.seq_len << ", " << a.steps
     << " steps per run (first window dropped), median of " << a.reps << " alternated runs each.\n";
  if (!a.out_md.empty()) write_file_atomic(a.out_md, md.str());
  if (a.json) std::cout << j.dump(2) << std::endl;
  else std::cout << md.str();
  return 0;
}

// The EP model (src/ecdlm/bench/dist_model.h) with the loopback link measured by a 2-rank probe.
int run_ep_model(BenchDistArgs& a) {
  auto& p = a.model;
  p.data_dir = a.data;
  p.batch = a.batch;
  p.seq_len = a.seq_len;
  if (p.ec_model.empty() != p.tc_model.empty())
    fail("", p.ec_model.empty() ? "--bench-ec-model" : "--bench-tc-model", "the EP model needs both checkpoints",
         "pass --bench-ec-model EC_DIR --bench-tc-model TC_DIR");
  if (p.loopback_gbps <= 0) {
    char exe[4096];
    const ssize_t n = ::readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0) fail("/proc/self/exe", "", "cannot find this binary");
    exe[n] = '\0';
    const auto out = (fs::temp_directory_path() / ("ecdlm-a2a-probe." + std::to_string(::getpid()) + ".json")).string();
    std::ostringstream cmd;
    cmd << quote(exe) << " launch --nproc-per-node 2 -- --threads 1 -q bench a2a-probe --bytes " << (4 << 20)
        << " --out " << quote(out) << " > " << quote(out + ".log") << " 2>&1";
    LOG_INFO("bench dist: measuring all_to_all on loopback (2 ranks, Gloo)");
    if (std::system(cmd.str().c_str()) != 0 || !fs::exists(out)) {
      const auto log = fs::exists(out + ".log") ? read_text_file(out + ".log") : std::string();
      fs::remove(out + ".log");
      fail(out + ".log", "", "the loopback all_to_all probe failed: " + log, "or pass --bench-loopback-gbps");
    }
    const auto j = nlohmann::json::parse(read_text_file(out));
    fs::remove(out);
    fs::remove(out + ".log");
    p.loopback_gbps = j["gbps"].get<double>();
    p.loopback_latency_us = j["latency_us"].get<double>();
    LOG_INFO("bench dist: loopback all_to_all " << p.loopback_gbps << " Gb/s, " << p.loopback_latency_us << " us per call");
  }
  const auto r = bench::run_ep_model(p);
  const auto md = bench::ep_model_markdown(r);
  if (!a.out_md.empty()) write_file_atomic(a.out_md, md);
  if (!a.plot.empty()) bench::ep_model_plot(r, a.plot);
  if (a.json) std::cout << r.dump(2) << std::endl;
  else std::cout << md;
  return 0;
}

}  // namespace

void register_bench_dist(CLI::App* bench) {
  auto a = std::make_shared<BenchDistArgs>();
  auto* s = bench->add_subcommand("dist", "Data-parallel throughput: 1 rank x N threads vs N ranks x 1 thread, "
                                          "same global batch, plus all-reduce bytes and wait per step; with "
                                          "--bench-ec-model and --bench-tc-model, the expert-parallel scaling model instead");
  s->add_option("--config", a->config, "Run config JSON (the model)")->capture_default_str()->check(CLI::ExistingFile);
  s->add_option("--data", a->data, "Prepared data directory")->required();
  s->add_option("--bench-ranks", a->ranks, "N: ranks, and threads of the 1-rank run")->capture_default_str()->check(CLI::Range(2, 64));
  s->add_option("--bench-steps", a->steps, "Optimizer steps per run")->capture_default_str()->check(CLI::Range(4, 100000));
  s->add_option("--bench-reps", a->reps, "Runs of each setup (median reported)")->capture_default_str()->check(CLI::PositiveNumber);
  s->add_option("--train-batch-size", a->batch, "Global batch (EP model: the batch of one rank)")
      ->capture_default_str()->check(CLI::PositiveNumber);
  s->add_option("--train-seq-len", a->seq_len, "Sequence length")->capture_default_str()->check(CLI::PositiveNumber);
  s->add_option("--dist-ep", a->ep, "Also run the ranks expert parallel (train --dist-ep N) and report the "
                                    "all_to_all bytes and time per step")->capture_default_str();
  s->add_flag("--bench-ep-f32-payload", a->ep_f32_payload,
              "With --dist-ep: also run the expert-parallel setup with --dist-ep-f32-payload (f32 dispatch rows)");
  s->add_option("--work-dir", a->work_dir, "Keep the runs here (default: a temporary dir, removed)");
  s->add_option("--out-md", a->out_md, "Also write the markdown table to this file");
  s->add_flag("--json", a->json, "Print the numbers as JSON");
  s->add_option("--bench-ec-model", a->model.ec_model,
                "EP scaling model (instead of the data-parallel run): the expert-choice checkpoint, e.g. runs/brown-ec/best");
  s->add_option("--bench-tc-model", a->model.tc_model, "EP scaling model: the token-choice (dropless) checkpoint");
  s->add_option("--bench-ep", a->model.ep, "EP model: expert-parallel sizes (EP > experts: replicated experts)")
      ->delimiter(',')->capture_default_str()->check(CLI::PositiveNumber);
  s->add_option("--bench-link-gbps", a->model.link_gbps, "EP model: the assumed inter-node link, Gb/s per rank")
      ->capture_default_str()->check(Finite)->check(CLI::PositiveNumber);
  s->add_option("--bench-link-latency-us", a->model.link_latency_us, "EP model: its cost per all_to_all call, us")
      ->capture_default_str()->check(Finite)->check(CLI::NonNegativeNumber);
  s->add_option("--bench-loopback-gbps", a->model.loopback_gbps,
                "EP model: the loopback link's Gb/s (default: measured by a 2-rank all_to_all probe)")
      ->check(Finite)->check(CLI::PositiveNumber);
  s->add_option("--bench-loopback-latency-us", a->model.loopback_latency_us, "EP model: with --bench-loopback-gbps, its us per call")
      ->check(Finite)->check(CLI::NonNegativeNumber);
  s->add_option("--bench-capacity-factor", a->model.capacity_factor, "EP model: the capacity of the \"TC, capacity\" rows")
      ->capture_default_str()->check(Finite)->check(CLI::PositiveNumber);
  s->add_option("--bench-ep-batches", a->model.batches, "EP model: routed validation batches per model (>= the largest EP)")
      ->capture_default_str()->check(CLI::PositiveNumber);
  s->add_option("--bench-ep-steps", a->model.steps, "EP model: sampled steps per EP")->capture_default_str()->check(CLI::PositiveNumber);
  s->add_option("--bench-bytes-per-value", a->model.bytes_per_elem, "EP model: bytes per exchanged activation (4: f32, 2: bf16)")
      ->capture_default_str()->check(CLI::Range(1, 8));
  s->add_option("--plot", a->plot, "EP model: also write the step-time ratios to this PNG");
  set_runner(s, [a, s] {
    const bool ep_model = !a->model.ec_model.empty() || !a->model.tc_model.empty();
    // Each mode's flags, refused in the other (they would do nothing there).
    const char* data_parallel_only[] = {"--config", "--bench-ranks", "--bench-steps", "--bench-reps", "--dist-ep",
                                        "--bench-ep-f32-payload", "--work-dir"};
    const char* ep_model_only[] = {"--bench-ep", "--bench-link-gbps", "--bench-link-latency-us", "--bench-loopback-gbps",
                                   "--bench-loopback-latency-us", "--bench-capacity-factor", "--bench-ep-batches",
                                   "--bench-ep-steps", "--bench-bytes-per-value", "--plot"};
    for (const char* f : ep_model ? std::vector<const char*>(std::begin(data_parallel_only), std::end(data_parallel_only))
                                  : std::vector<const char*>(std::begin(ep_model_only), std::end(ep_model_only)))
      if (s->count(f) > 0)
        fail("", f, ep_model ? "is a data-parallel run's setting; with --bench-ec-model / --bench-tc-model the EP model runs"
                             : "is an EP model setting; it runs with --bench-ec-model and --bench-tc-model",
             "drop " + std::string(f));
    if (s->count("--bench-loopback-latency-us") > 0 && s->count("--bench-loopback-gbps") == 0)
      fail("", "--bench-loopback-latency-us", "only applies with --bench-loopback-gbps (otherwise the probe measures both)",
           "add --bench-loopback-gbps, or drop it");
    return ep_model ? run_ep_model(*a) : run_bench_dist(*a);
  });
  // Hidden: the loopback all_to_all probe the EP model launches on 2 ranks.
  auto probe = std::make_shared<std::pair<int64_t, std::string>>(4 << 20, "");
  auto* pr = bench->add_subcommand("a2a-probe", "");
  pr->group("");
  pr->add_option("--bytes", probe->first, "Bytes per peer")->check(CLI::PositiveNumber);
  pr->add_option("--out", probe->second, "JSON result (rank 0)")->required();
  set_runner(pr, [probe] {
    bench::probe_all_to_all(probe->first, 10, probe->second);
    return 0;
  });
}

}  // namespace ecdlm::cli
