#include "ecdlm/bench/dist_model.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>
#include <sstream>
#include <stdexcept>

#include "ecdlm/data/batcher.h"
#include "ecdlm/data/shards.h"
#include "ecdlm/dist/expert_parallel.h"
#include "ecdlm/dist/process_group.h"
#include "ecdlm/model/checkpoint.h"
#include "ecdlm/train/diffusion.h"
#include "ecdlm/util/compat.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/fs.h"
#include "ecdlm/util/log.h"
#include "ecdlm/util/plot.h"
#include "ecdlm/util/stats.h"

namespace ecdlm::bench {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// What the model needs of one checkpoint: its routing on the pool of local batches and its times.
struct Routed {
  std::string dir;
  bool expert_choice = false;
  int64_t E = 0, K = 0, D = 0, layers = 0;
  std::vector<std::vector<std::vector<int64_t>>> counts;  // [batch][MoE layer][expert]: (token, expert) pairs
  double t_full_s = 0, t_pair_s = 0, t_rest_s = 0, pairs_per_token = 0;
  double expert_max_over_mean = 0;  // one batch, one layer: the busiest expert over the mean (averaged)
  std::vector<double> full_s, pair_s;  // timing samples
};

Routed route_and_time(const std::string& dir, const EpModelParams& p, bool want_ec) {
  if (!std::filesystem::exists(std::filesystem::path(dir) / "config.json"))
    fail(dir, want_ec ? "--bench-ec-model" : "--bench-tc-model", "not a model directory (no config.json)",
         "pass a trained checkpoint, e.g. runs/brown-ec/best");
  Routed R;
  R.dir = dir;
  auto model = load_model(dir);
  const auto& cfg = model->config();
  auto blocks = model->moe_blocks();
  if (blocks.empty()) fail(dir + "/config.json", "num_experts", "the model has no MoE layer", "pass an MoE checkpoint");
  R.expert_choice = blocks[0]->router_type() == moe::RouterType::kExpertChoice;
  if (R.expert_choice != want_ec)
    fail(dir + "/config.json", "moe_router_type",
         std::string("is ") + (R.expert_choice ? "expert choice" : "token choice") + ", the flag wants " +
             (want_ec ? "expert choice" : "token choice"),
         "pass the expert-choice checkpoint to --bench-ec-model and the token-choice one to --bench-tc-model");
  R.E = cfg.num_experts;
  R.K = cfg.num_experts_per_tok;
  R.D = cfg.hidden_size;
  R.layers = static_cast<int64_t>(blocks.size());
  for (int64_t ep : p.ep)
    if (ep % R.E != 0 && R.E % ep != 0)
      fail("", "--bench-ep", "EP " + std::to_string(ep) + " and the model's " + std::to_string(R.E) +
                                 " experts: one must divide the other",
           "e.g. 8,32,64 for 32 experts");

  if (cfg.mask_token_id < 0)
    fail(dir + "/config.json", "mask_token_id", "not set: the training noise needs the mask id",
         "set mask_token_id to the data's mask id (its meta.json)");
  const auto shard = data::TokenShard::open(p.data_dir, "val");
  if (shard.vocab_size() > cfg.vocab_size)
    fail(p.data_dir + "/val.json", "vocab_size", "the data's vocabulary (" + std::to_string(shard.vocab_size()) +
                                                    ") is larger than the model's (" + std::to_string(cfg.vocab_size) + ")",
         "pass the data the model was trained on");
  const data::EvalWindows windows(shard, p.seq_len, 0);
  const int64_t distinct = windows.size() / p.batch;
  if (distinct < 1)
    fail(p.data_dir + "/val.bin", "num_tokens", "fewer validation tokens than one batch of " +
                                                    std::to_string(p.batch) + " x " + std::to_string(p.seq_len),
         "use a smaller --train-batch-size or --train-seq-len");
  if (distinct < p.batches)
    LOG_INFO("bench dist: " << distinct << " distinct validation batches; the other " << p.batches - distinct
                            << " reuse their windows with fresh noise");
  model->train();  // routing as in training (capacities from the noised batch's mask ratio)
  auto noised = [&](int64_t i) {
    auto x0 = windows.batch((i % distinct) * p.batch, p.batch);
    return std::make_pair(x0, noise_batch(x0, cfg.mask_token_id, mix_seed(p.seed, static_cast<uint64_t>(i))));
  };
  {
    torch::NoGradGuard ng;
    compat::CpuAutocast ac(true);
    double pairs = 0;
    for (int64_t i = 0; i < p.batches; ++i) {
      const auto nb = noised(i).second;
      ForwardOptions fo;
      fo.mask_ratio_B = nb.r_B;
      fo.skip_lm_head = true;
      model->forward(nb.x_t_BL, fo);
      std::vector<std::vector<int64_t>> per_layer;
      for (auto& b : blocks) {
        // EC: the pairs computed (exactly C per expert and sequence); TC: the pre-drop counts.
        const auto& plan = b->last_plan();
        auto c = (R.expert_choice || !plan.load_E.defined() ? plan.stats.tokens_per_expert_E : plan.load_E)
                     .to(torch::kInt64).contiguous();
        per_layer.emplace_back(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + R.E);
        const auto n = static_cast<double>(c.sum().item<int64_t>());
        pairs += n;
        if (n > 0) R.expert_max_over_mean += static_cast<double>(c.max().item<int64_t>()) / (n / static_cast<double>(R.E));
      }
      R.counts.push_back(std::move(per_layer));
    }
    R.pairs_per_token = pairs / static_cast<double>(p.batches * R.layers * p.batch * p.seq_len);
    R.expert_max_over_mean /= static_cast<double>(p.batches * R.layers);
  }

  // A training forward + backward at the batch shape (bf16 autocast, as `train`), median of reps.
  std::vector<double> full;
  for (int64_t rep = 0; rep <= p.timing_reps; ++rep) {
    const auto [x0, nb] = noised(rep);
    model->zero_grad();
    const auto t0 = Clock::now();
    {
      compat::CpuAutocast ac(true);
      ForwardOptions fo;
      fo.mask_ratio_B = nb.r_B;
      fo.skip_lm_head = true;
      auto fwd = model->forward(nb.x_t_BL, fo);
      auto dl = diffusion_loss(model, fwd.hidden_BLD, x0, nb, true);
      (dl.loss + fwd.aux_loss).backward();
    }
    if (rep > 0) full.push_back(since(t0));  // the first is warm-up
  }
  R.full_s = full;
  // The routed experts alone: forward + backward over balanced slots of the same pair count.
  const int64_t N = std::max<int64_t>(1, (p.batch * p.seq_len * R.K) / R.E);
  std::vector<double> ex;
  for (int64_t rep = 0; rep <= p.timing_reps; ++rep) {
    auto x = torch::randn({R.E, N, R.D}).requires_grad_(true);
    model->zero_grad();
    const auto t0 = Clock::now();
    {
      compat::CpuAutocast ac(true);
      blocks[0]->experts->forward_slots(x).to(torch::kFloat32).sum().backward();
    }
    if (rep > 0) ex.push_back(since(t0));
  }
  model->zero_grad();
  for (double t : ex) R.pair_s.push_back(t / static_cast<double>(R.E * N));
  return R;
}

// The two models share one architecture, so they share one set of rates: the medians of both
// models' samples (on a loaded machine, separate medians would put noise into the EC / TC ratio).
// The rest of the step (everything but the routed experts) is what the full step leaves.
void set_rates(Routed& ec, Routed& tc, const EpModelParams& p) {
  std::vector<double> full = ec.full_s, pair = ec.pair_s;
  full.insert(full.end(), tc.full_s.begin(), tc.full_s.end());
  pair.insert(pair.end(), tc.pair_s.begin(), tc.pair_s.end());
  const double t_full = median(full), t_pair = median(pair);
  const double pairs = 0.5 * (ec.pairs_per_token + tc.pairs_per_token) * static_cast<double>(p.batch * p.seq_len * ec.layers);
  for (Routed* m : {&ec, &tc}) {
    m->t_full_s = t_full;
    m->t_pair_s = t_pair;
    m->t_rest_s = std::max(0.0, t_full - t_pair * pairs);
    LOG_INFO("bench dist: " << m->dir << ": " << (m->expert_choice ? "EC" : "TC") << ", " << m->pairs_per_token
                            << " experts per token, busiest expert " << m->expert_max_over_mean
                            << "x the mean; shared rates: step " << 1e3 * t_full << " ms, routed experts " << 1e9 * t_pair
                            << " ns per pair, the rest " << 1e3 * m->t_rest_s << " ms");
  }
}

struct Variant {
  std::string name;
  const Routed* m;
  bool capacity = false;   // fixed slots per (source rank, expert): padded, the excess dropped
};

// One variant at EP ranks over a link: means over `steps` sampled steps.
json model_variant(const Variant& v, int64_t ep, const Link& link, const EpModelParams& p) {
  const Routed& m = *v.m;
  const int64_t E = m.E;
  const double experts_per_rank = static_cast<double>(E) / static_cast<double>(ep);  // < 1: replicas
  const int64_t local_pairs_ideal = p.batch * p.seq_len * m.K;
  const int64_t cap = static_cast<int64_t>(std::ceil(p.capacity_factor * static_cast<double>(local_pairs_ideal) / static_cast<double>(E)));
  const double row_bytes = static_cast<double>(m.D * p.bytes_per_elem);
  std::mt19937_64 rng(p.seed ^ static_cast<uint64_t>(ep));
  std::vector<int64_t> pool(m.counts.size());
  for (size_t i = 0; i < pool.size(); ++i) pool[i] = static_cast<int64_t>(i);
  double t_step = 0, t_expert = 0, t_a2a = 0, straggler = 0, straggler_max = 0, bytes_rank = 0, dropped = 0, routed = 0;
  for (int64_t s = 0; s < p.steps; ++s) {
    std::shuffle(pool.begin(), pool.end(), rng);  // rank r holds batch pool[r]
    double step_expert = 0, step_a2a = 0;
    for (int64_t l = 0; l < m.layers; ++l) {
      std::vector<const std::vector<int64_t>*> by_rank;
      for (int64_t r = 0; r < ep; ++r)
        by_rank.push_back(&m.counts[static_cast<size_t>(pool[static_cast<size_t>(r)])][static_cast<size_t>(l)]);
      const auto c = ep_layer_cost(by_rank, v.capacity ? cap : 0);
      routed += c.routed;
      dropped += c.dropped;
      straggler += c.straggler();
      straggler_max = std::max(straggler_max, c.straggler());
      // Dispatch and combine, forward and backward; dropless TC exchanges its counts first (forward).
      const double one = link.latency_us * 1e-6 + c.slowest_xfer * row_bytes * 8.0 / (link.gbps * 1e9);
      step_a2a += 4.0 * one + (v.capacity || m.expert_choice ? 0.0 : link.latency_us * 1e-6);
      step_expert += m.t_pair_s * c.max_rows;
      bytes_rank += 4.0 * c.sent * row_bytes / static_cast<double>(ep);
    }
    t_expert += step_expert;
    t_a2a += step_a2a;
    t_step += m.t_rest_s + step_expert + step_a2a;
  }
  const double S = static_cast<double>(p.steps);
  return {{"routing", v.name}, {"ep", ep}, {"link", link.name}, {"experts_per_rank", experts_per_rank},
          {"a2a_mb_per_rank_step", bytes_rank / S / 1e6}, {"straggler", straggler / (S * static_cast<double>(m.layers))},
          {"straggler_worst_layer", straggler_max}, {"dropped", routed > 0 ? dropped / routed : 0.0},
          {"expert_ms", 1e3 * t_expert / S}, {"a2a_ms", 1e3 * t_a2a / S}, {"rest_ms", 1e3 * m.t_rest_s},
          {"step_ms", 1e3 * t_step / S}};
}

std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

}  // namespace

LayerCost ep_layer_cost(const std::vector<const std::vector<int64_t>*>& counts, int64_t cap) {
  const auto ep = static_cast<int64_t>(counts.size());
  const auto E = static_cast<int64_t>(counts.at(0)->size());
  if (ep % E != 0 && E % ep != 0) throw std::invalid_argument("ep_layer_cost: EP and E must divide one another");
  const int64_t R = ep > E ? ep / E : 1, per_rank = ep > E ? 0 : E / ep;
  std::vector<double> load(static_cast<size_t>(ep), 0.0), send(load), recv(load);
  LayerCost c;
  c.ranks = static_cast<double>(ep);
  for (int64_t r = 0; r < ep; ++r)
    for (int64_t e = 0; e < E; ++e) {
      const auto n = (*counts[static_cast<size_t>(r)])[static_cast<size_t>(e)];
      const int64_t q = ep > E ? e * R + r % R : e / per_rank;
      const double rows = static_cast<double>(cap > 0 ? cap : n);
      if (cap > 0) c.dropped += static_cast<double>(std::max<int64_t>(0, n - cap));
      c.routed += static_cast<double>(n);
      load[static_cast<size_t>(q)] += rows;
      if (q != r) send[static_cast<size_t>(r)] += rows, recv[static_cast<size_t>(q)] += rows;
    }
  for (int64_t q = 0; q < ep; ++q) {
    c.max_rows = std::max(c.max_rows, load[static_cast<size_t>(q)]);
    c.slowest_xfer = std::max({c.slowest_xfer, send[static_cast<size_t>(q)], recv[static_cast<size_t>(q)]});
    c.sent += send[static_cast<size_t>(q)];
  }
  return c;
}

void probe_all_to_all(int64_t bytes, int64_t reps, const std::string& out_json) {
  const auto env = dist::DistEnv::from_environment();
  if (!env.distributed()) fail("", "WORLD_SIZE", "the probe needs a distributed run", "run it under `ecdlm launch --nproc-per-node 2`");
  auto group = dist::ProcessGroup::join(env, 120.0);
  torch::NoGradGuard ng;
  const int64_t D = 256, W = group->size();
  auto time_rows = [&](int64_t rows) {
    const std::vector<int64_t> split(static_cast<size_t>(W), rows);
    auto x = torch::ones({rows * W, D});
    std::vector<double> t;
    for (int64_t rep = 0; rep <= reps; ++rep) {
      group->barrier();
      const auto t0 = Clock::now();
      dist::all_to_all_rows(*group, x, split, split);
      if (rep > 0) t.push_back(since(t0));
    }
    // The slowest rank's median (what a synchronous exchange costs): each rank fills its own slot.
    auto all = torch::zeros({W}, torch::kFloat64);
    all[group->rank()] = median(t);
    group->all_reduce_sum(all);
    return all.max().item<double>();
  };
  const int64_t rows = std::max<int64_t>(1, bytes / (D * 4));
  const double small = time_rows(1), big = time_rows(rows);
  const double payload = static_cast<double>(rows * D * 4);  // per peer
  const double gbps = payload * 8.0 / std::max(1e-9, big - small) / 1e9;
  if (group->rank() == 0)
    write_file_atomic(out_json, json{{"gbps", gbps}, {"latency_us", 1e6 * small}, {"ranks", W}, {"bytes", payload},
                                     {"seconds", big}}.dump(2) + "\n");
}

json run_ep_model(const EpModelParams& p) {
  if (p.ep.empty()) fail("", "--bench-ep", "no EP sizes", "e.g. 8,32,64");
  const int64_t max_ep = *std::max_element(p.ep.begin(), p.ep.end());
  if (p.batches < max_ep)
    fail("", "--bench-ep-batches", std::to_string(p.batches) + " local batches cannot fill EP " + std::to_string(max_ep),
         "pass at least the largest EP");
  if (!(p.capacity_factor > 0)) fail("", "--bench-capacity-factor", "must be > 0", "e.g. 1.25");
  auto ec = route_and_time(p.ec_model, p, true);
  auto tc = route_and_time(p.tc_model, p, false);
  if (ec.E != tc.E || ec.D != tc.D || ec.layers != tc.layers)
    fail(p.tc_model + "/config.json", "num_experts", "the EC and TC models differ in shape (experts, hidden size or MoE layers)",
         "compare checkpoints of one architecture");
  set_rates(ec, tc, p);
  std::vector<Link> links;
  if (p.loopback_gbps > 0) links.push_back({"loopback (measured)", p.loopback_gbps, p.loopback_latency_us});
  links.push_back({"inter-node (assumed " + fmt("%g", p.link_gbps) + " Gb/s)", p.link_gbps, p.link_latency_us});
  const std::string cap_name = "TC, capacity " + fmt("%g", p.capacity_factor);
  const std::vector<Variant> variants = {{"EC", &ec, false}, {"TC, dropless", &tc, false}, {cap_name, &tc, true}};
  json rows = json::array();
  for (const auto& link : links)
    for (int64_t ep : p.ep) {
      double ec_ms = 0;
      for (const auto& v : variants) {
        auto r = model_variant(v, ep, link, p);
        if (v.m == &ec) ec_ms = r["step_ms"].get<double>();
        r["vs_ec"] = ec_ms > 0 ? r["step_ms"].get<double>() / ec_ms : 0.0;
        rows.push_back(r);
      }
    }
  auto model_json = [](const Routed& m) {
    return json{{"dir", m.dir}, {"experts", m.E}, {"experts_per_token", m.pairs_per_token}, {"moe_layers", m.layers},
                {"busiest_expert_over_mean", m.expert_max_over_mean},
                {"hidden", m.D}, {"step_ms", 1e3 * m.t_full_s}, {"expert_ns_per_pair", 1e9 * m.t_pair_s},
                {"rest_ms", 1e3 * m.t_rest_s}};
  };
  json jl = json::array();
  for (const auto& l : links) jl.push_back({{"name", l.name}, {"gbps", l.gbps}, {"latency_us", l.latency_us}});
  return {{"ec", model_json(ec)}, {"tc", model_json(tc)}, {"links", jl}, {"batch", p.batch}, {"seq_len", p.seq_len},
          {"batches", p.batches}, {"steps", p.steps}, {"capacity_factor", p.capacity_factor},
          {"bytes_per_elem", p.bytes_per_elem}, {"rows", rows}};
}

std::string ep_model_markdown(const json& r) {
  std::ostringstream o;
  const auto &ec = r["ec"], &tc = r["tc"];
  o << "Per rank: a batch of " << r["batch"] << " x " << r["seq_len"] << " tokens (the training shape); "
    << r["steps"] << " sampled steps per EP, each from " << r["batches"] << " routed validation batches. EC: "
    << ec["dir"].get<std::string>() << " (" << fmt("%.2f", ec["experts_per_token"].get<double>())
    << " experts per token), TC: " << tc["dir"].get<std::string>() << " (" << fmt("%.2f", tc["experts_per_token"].get<double>())
    << "); the busiest expert of a layer over the mean, per local batch: "
    << fmt("%.2f", ec["busiest_expert_over_mean"].get<double>()) << " (EC), "
    << fmt("%.2f", tc["busiest_expert_over_mean"].get<double>()) << " (TC). Measured here (one set of rates for both): "
    << "a training step " << fmt("%.0f", ec["step_ms"].get<double>()) << " ms, routed experts "
    << fmt("%.0f", ec["expert_ns_per_pair"].get<double>()) << " ns per (token, expert) pair forward + backward. "
    << "Activations exchanged at " << r["bytes_per_elem"] << " bytes per value. Links:";
  for (const auto& l : r["links"])
    o << " " << l["name"].get<std::string>() << " " << fmt("%.2f", l["gbps"].get<double>()) << " Gb/s, "
      << fmt("%.0f", l["latency_us"].get<double>()) << " us per call;";
  o << "\n\n| link | EP | routing | all-to-all MB per rank per step | straggler (max / mean) | worst layer | dropped | "
       "experts ms | all-to-all ms | step ms | step vs EC |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const auto& x : r["rows"])
    o << "| " << x["link"].get<std::string>() << " | " << x["ep"] << " | " << x["routing"].get<std::string>() << " | "
      << fmt("%.1f", x["a2a_mb_per_rank_step"].get<double>()) << " | " << fmt("%.2f", x["straggler"].get<double>()) << " | "
      << fmt("%.2f", x["straggler_worst_layer"].get<double>()) << " | " << fmt("%.1f%%", 100 * x["dropped"].get<double>())
      << " | " << fmt("%.0f", x["expert_ms"].get<double>()) << " | " << fmt("%.1f", x["a2a_ms"].get<double>()) << " | "
      << fmt("%.0f", x["step_ms"].get<double>()) << " | " << fmt("%.2fx", x["vs_ec"].get<double>()) << " |\n";
  return o.str();
}

void ep_model_plot(const json& r, const std::string& png) {
  std::vector<Series> series;
  std::vector<double> eps;
  for (const auto& link : r["links"])
    for (const char* routing : {"TC, dropless", "TC, capacity"}) {
      Series s;
      s.name = std::string(routing) + " over EC, " + link["name"].get<std::string>();
      s.style = Series::Style::kLinesPoints;
      for (const auto& x : r["rows"])
        if (x["link"] == link["name"] && x["routing"].get<std::string>().rfind(routing, 0) == 0) {
          s.x.push_back(x["ep"].get<double>());
          s.y.push_back(x["vs_ec"].get<double>());
          eps.push_back(x["ep"].get<double>());
        }
      series.push_back(s);
    }
  if (eps.empty()) return;
  const double lo = *std::min_element(eps.begin(), eps.end()), hi = *std::max_element(eps.begin(), eps.end());
  series.push_back(Series("paper: EC 2.1x over top-2 TC (time to quality, not step time)", {lo, hi}, {2.1, 2.1}));
  series.push_back(Series("equal step time", {lo, hi}, {1.0, 1.0}));
  PlotSpec spec;
  spec.title = "Modelled training step time, token choice over expert choice";
  spec.xlabel = "expert-parallel ranks (EP)";
  spec.ylabel = "step time / EC step time";
  spec.log_x = true;
  spec.key = "below";
  if (!plot_lines(png, spec, series)) LOG_WARN("bench dist: gnuplot not found; " << png << " not written");
}

}  // namespace ecdlm::bench
