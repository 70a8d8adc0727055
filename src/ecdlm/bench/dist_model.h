// The expert-parallel scaling model of `ecdlm bench dist --bench-ep-model`: what EP = 8, 32, 64
// ranks would cost per training step for expert choice (EC), dropless token choice (TC) and token
// choice with a capacity factor, from measurement plus arithmetic:
//  - routing: the per-expert (token, expert) counts of real forwards of trained checkpoints on
//    validation batches of the training shape (B x L per rank, noised as in training); a step at EP
//    ranks takes EP such batches, one per rank;
//  - compute: this machine's time of a training forward + backward of the model at B x L, and of
//    its routed experts per (token, expert) pair; the rest of the step (attention, shared expert,
//    router, embeddings) is data parallel and the same on every rank;
//  - links: an all_to_all's latency and rate (measured on loopback by a 2-rank probe, and an
//    assumed inter-node link, both named inputs).
// Each MoE layer runs 4 all_to_alls per step (dispatch and combine, forward and backward) and every
// rank waits for the slowest at each of them, so a layer costs the most-loaded rank's expert time
// plus the slowest rank's exchange.
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace ecdlm::bench {

struct EpModelParams {
  std::string ec_model, tc_model, data_dir;  // checkpoints (EC; TC, dropless) and the prepared data
  std::vector<int64_t> ep = {8, 32, 64};
  int64_t batch = 16, seq_len = 256;         // per rank: the training batch
  int64_t batches = 64;                      // routed local batches per model (at least the largest EP)
  int64_t steps = 16;                        // sampled steps per EP (random sets of EP batches)
  double capacity_factor = 1.25;             // for "TC, capacity": slots per expert = factor * B*L*K / E
  int64_t bytes_per_elem = 4;                // exchanged activations (ecdlm's exchange sends f32 hidden states)
  double loopback_gbps = 0, loopback_latency_us = 0;  // measured (probe_all_to_all)
  double link_gbps = 100, link_latency_us = 10;       // an assumed inter-node link
  int64_t timing_reps = 3;
  uint64_t seed = 1234;
};

// One all_to_all link: gigabits per second of payload per rank and a fixed cost per call.
struct Link {
  std::string name;
  double gbps = 0, latency_us = 0;
};

// One MoE layer at EP ranks, rank r holding the local batch whose per-expert (token, expert) counts
// are counts[r] (each of E entries). EP <= E: rank q owns experts [q * E/EP, +E/EP); EP > E (a
// multiple): expert e has EP/E replicas on ranks e * EP/E + j, and rank r sends to replica r mod EP/E.
// cap > 0: fixed slots per (source rank, expert), padded and sent whole, the excess dropped.
struct LayerCost {
  double max_rows = 0;      // (token, expert) rows the most-loaded rank computes (padding included)
  double routed = 0;        // rows routed over all ranks, before drops
  double dropped = 0;       // rows beyond the capacity
  double slowest_xfer = 0;  // rows the busiest rank sends or receives off-rank (one exchange)
  double sent = 0;          // rows sent off-rank over all ranks (one exchange)
  double straggler() const { return routed > 0 ? max_rows / (routed / ranks) : 0.0; }
  double ranks = 1;
};
LayerCost ep_layer_cost(const std::vector<const std::vector<int64_t>*>& counts, int64_t cap);

// Times all_to_all on the process group of the torchrun environment this process runs in (every
// rank sends `bytes` per peer): writes {"gbps", "latency_us", "ranks", "bytes"} to `out_json` on
// rank 0. Run under `ecdlm launch --nproc-per-node 2`.
void probe_all_to_all(int64_t bytes, int64_t reps, const std::string& out_json);

// Routes, times and models; returns the rows (one per model variant x EP x link) and the inputs.
nlohmann::json run_ep_model(const EpModelParams& p);
std::string ep_model_markdown(const nlohmann::json& r);
// Step-time ratio (TC variant over EC) against EP, per link, with the paper's 2.1x as a line.
void ep_model_plot(const nlohmann::json& r, const std::string& png);

}  // namespace ecdlm::bench
