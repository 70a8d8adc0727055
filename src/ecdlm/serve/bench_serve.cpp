#include "ecdlm/serve/bench_serve.h"

#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <sstream>
#include <thread>

#include "ecdlm/bench/generate_bench.h"
#include "ecdlm/model/checkpoint.h"
#include "ecdlm/model/model_dir.h"
#include "ecdlm/model/quantize.h"
#include "ecdlm/kernels/quant.h"
#include "ecdlm/kernels/quant_repack.h"
#include "ecdlm/serve/server.h"
#include "ecdlm/text/tokenizer.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/log.h"
#include "ecdlm/util/profile.h"
#include "ecdlm/util/progress.h"

namespace ecdlm::serve {
namespace {

using nlohmann::json;
using BClock = std::chrono::steady_clock;

// The synthetic model has no tokenizer: its "text" is the ids, space-separated.
class IdTokenizer : public text::Tokenizer {
 public:
  IdTokenizer(int64_t vocab, int32_t mask) : vocab_(vocab), mask_(mask) {}
  std::vector<int32_t> encode(const std::string& text) const override {
    std::vector<int32_t> out;
    std::istringstream is(text);
    for (int64_t id; is >> id;) out.push_back(static_cast<int32_t>(id));
    return out;
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string s;
    for (auto id : ids) s += " " + std::to_string(id);
    return s;
  }
  int64_t vocab_size() const override { return vocab_; }
  int32_t mask_id() const override { return mask_; }
  int32_t eos_id() const override { return -1; }
  int32_t pad_id() const override { return -1; }
  std::string id_to_piece(int32_t id) const override { return std::to_string(id); }
  int32_t piece_to_id(const std::string&) const override { return -1; }

 private:
  int64_t vocab_;
  int32_t mask_;
};

struct Sample {
  double ttfb_ms = 0, latency_ms = 0;
  int64_t tokens = 0;
};

// One streamed completion: time to the first block's text, to [DONE], and the usage's tokens.
Sample stream_request(int port, const json& body) {
  httplib::Client cli("127.0.0.1", port);
  cli.set_read_timeout(3600, 0);
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  Sample s;
  bool first = false;
  std::string buf;
  const auto t0 = BClock::now();
  auto ms = [&] { return std::chrono::duration<double, std::milli>(BClock::now() - t0).count(); };
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    buf.append(data, n);
    for (size_t cut; (cut = buf.find("\n\n")) != std::string::npos; buf.erase(0, cut + 2)) {
      const auto ev = buf.substr(0, cut);
      if (ev.rfind("data: {", 0) != 0) continue;
      const auto j = json::parse(ev.substr(6));
      if (j.contains("error")) throw std::runtime_error("bench serve: " + j["error"].dump());
      if (!first && !j["choices"].empty() && !j["choices"][0].value("text", std::string()).empty())
        first = true, s.ttfb_ms = ms();
      if (j.contains("usage") && j["usage"].is_object()) s.tokens = j["usage"]["completion_tokens"].get<int64_t>();
    }
    return true;
  };
  auto res = cli.send(req);
  if (!res || res->status != 200)
    throw std::runtime_error("bench serve: request failed (" + (res ? std::to_string(res->status) : httplib::to_string(res.error())) + ")");
  s.latency_ms = ms();
  return s;
}

double pct(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto i = static_cast<size_t>(std::min<double>(static_cast<double>(v.size() - 1), q * static_cast<double>(v.size() - 1) + 0.5));
  return v[i];
}

double metric(int port, const std::string& name) {
  httplib::Client cli("127.0.0.1", port);
  auto res = cli.Get("/metrics");
  if (!res) return 0;
  const auto at = res->body.find("\n" + name + " ");
  return at == std::string::npos ? 0 : std::stod(res->body.substr(at + name.size() + 2));
}

// weights: the dtype column ("" = the LM head's dtype, bf16 or f32).
void bench_model(const std::string& name, Loaded loaded, const ServeBenchParams& p, std::vector<ServeBenchRow>& rows,
                 const std::string& weights = "") {
  const std::string dtype = !weights.empty()                                                 ? weights
                            : loaded.model->lm_head->weight.scalar_type() == torch::kBFloat16 ? "bf16"
                                                                                              : "f32";
  const int64_t vocab = loaded.model->config().vocab_size, mask = loaded.defaults.params.mask_id;
  ServeParams sp;
  sp.port = 0;
  sp.sched.max_batch = p.max_batch;
  sp.sched.max_queue = std::max<int64_t>(64, p.requests);
  Server server(sp);
  const int port = server.listen();
  server.ready(std::move(loaded));
  // The same requests at every level: prompts of 16..96 tokens, request i sampled with seed i, EOS ignored.
  std::mt19937_64 rng(p.seed);
  std::vector<std::vector<int64_t>> prompts;
  for (int64_t i = 0; i < p.requests; ++i) {
    std::vector<int64_t> pr(static_cast<size_t>(16 + 16 * (i % 6)));
    for (auto& t : pr) t = static_cast<int64_t>(rng() % static_cast<uint64_t>(vocab - 2));
    for (auto& t : pr) if (t == mask) t = 0;
    prompts.push_back(pr);
  }
  for (const auto& routing : p.routings) {
    double base_tps = 0;
    for (int64_t c : p.clients) {
      const double steps0 = metric(port, "ecdlm_steps_total"), rows0 = metric(port, "ecdlm_batch_rows_sum");
      const double sec0 = metric(port, "ecdlm_step_seconds_sum");
      const double u0 = metric(port, "ecdlm_unique_experts_per_block_sum"), n0 = metric(port, "ecdlm_unique_experts_per_block_count");
      prof::reset();  // where the level's steps spend their time
      std::vector<Sample> samples(static_cast<size_t>(p.requests));
      std::atomic<int64_t> next{0}, done{0}, tokens_done{0};
      std::string error;
      std::mutex emu;
      const auto t0 = BClock::now();
      std::vector<std::thread> th;
      for (int64_t k = 0; k < c; ++k)
        th.emplace_back([&] {
          for (int64_t i; (i = next++) < p.requests;) {
            json body = {{"model", "bench"}, {"prompt", prompts[static_cast<size_t>(i)]}, {"max_tokens", p.max_tokens},
                         {"stream", true}, {"stream_options", {{"include_usage", true}}}, {"seed", i},
                         {"temperature", p.temperature},
                         {"ecdlm", {{"moe_routing", routing}, {"ignore_eos", true}}}};
            try {
              samples[static_cast<size_t>(i)] = stream_request(port, body);
              tokens_done += samples[static_cast<size_t>(i)].tokens;
            } catch (const std::exception& e) {
              std::lock_guard<std::mutex> lk(emu);
              error = e.what();
            }
            ++done;
          }
        });
      // A level of a large model takes minutes: requests done, tokens/s and ETA meanwhile.
      ProgressBar bar("bench serve " + routing + " " + std::to_string(c) + (c == 1 ? " client" : " clients"),
                      p.requests, "tok");
      while (done.load() < p.requests) {
        bar.update(done.load(), "", static_cast<double>(tokens_done.load()));
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      for (auto& t : th) t.join();
      bar.update(done.load(), "", static_cast<double>(tokens_done.load()));
      bar.finish();
      if (!error.empty()) throw std::runtime_error(error);
      ServeBenchRow r;
      r.model = name;
      r.routing = routing;
      r.dtype = dtype;
      r.clients = c;
      r.requests = p.requests;
      r.seconds = std::chrono::duration<double>(BClock::now() - t0).count();
      std::vector<double> ttfb, lat;
      for (const auto& s : samples) r.tokens += s.tokens, ttfb.push_back(s.ttfb_ms), lat.push_back(s.latency_ms);
      r.tokens_per_s = static_cast<double>(r.tokens) / r.seconds;
      if (c == p.clients.front()) base_tps = r.tokens_per_s;
      r.speedup = base_tps > 0 ? r.tokens_per_s / base_tps : 0;
      r.ttfb_p50_ms = pct(ttfb, 0.5);
      r.latency_p50_ms = pct(lat, 0.5);
      r.latency_p99_ms = pct(lat, 0.99);
      const double steps = metric(port, "ecdlm_steps_total") - steps0;
      r.batch_rows_mean = steps > 0 ? (metric(port, "ecdlm_batch_rows_sum") - rows0) / steps : 0;
      r.step_ms = steps > 0 ? 1000.0 * (metric(port, "ecdlm_step_seconds_sum") - sec0) / steps : 0;
      for (double ms : prof::totals_ms()) r.part_ms.push_back(steps > 0 ? ms / steps : 0);
      const double un = metric(port, "ecdlm_unique_experts_per_block_count") - n0;
      r.unique_experts_per_block = un > 0 ? (metric(port, "ecdlm_unique_experts_per_block_sum") - u0) / un : 0;
      LOG_INFO("bench serve: " << name << " " << routing << " " << c << " clients: " << r.tokens << " tokens in "
                               << r.seconds << " s = " << r.tokens_per_s << " tokens/s (x" << r.speedup << "), TTFB p50 "
                               << r.ttfb_p50_ms << " ms, latency p50 " << r.latency_p50_ms << " / p99 " << r.latency_p99_ms
                               << " ms, rows per step " << r.batch_rows_mean << ", " << r.step_ms << " ms per step");
      rows.push_back(r);
    }
  }
  server.stop();
}

// The dtype `ecdlm serve` loads `dir` in without --dtype: bf16 for bf16 weights, else f32.
std::string stored_dtype_name(const std::string& dir) {
  return stored_weight_dtype(io::SafetensorsSet::open(dir)) == "BF16" ? "bf16" : "f32";
}

}  // namespace

std::vector<ServeBenchRow> run_serve_bench(const ServeBenchParams& p) {
  if (p.clients.empty() || p.clients.front() != 1)
    fail("", "--clients", "the list must start at 1 (the one-after-another baseline)", "e.g. 1,2,4,8,16");
  if (p.requests < 1) fail("", "--requests", "must be >= 1", "e.g. 16");
  if (p.steps < 1 || p.steps > p.block_length)
    fail("", "--steps", "must be in [1, " + std::to_string(p.block_length) + "] (the block length): the server refuses more",
         "e.g. 8");
  if (!(p.temperature >= 0 && p.temperature <= 2))
    fail("", "--temperature", "must be in [0, 2], the server's range", "e.g. 1");
  if (!p.synthetic && p.model_dir.empty())
    fail("", "--no-synthetic", "nothing to benchmark: no synthetic model and no -m", "pass -m MODEL_DIR");
  for (const auto& dt : p.dtypes)
    if (dt != "f32" && dt != "bf16") fail("", "--dtype", "unknown dtype '" + dt + "'", "use f32, bf16 or f32,bf16");
  if (!p.dtypes.empty() && p.model_dir.empty())
    fail("", "--dtype", "applies to the -m model only (the synthetic model is bf16)", "pass -m MODEL_DIR, or drop --dtype");
  for (const auto& w : p.synth_weights)
    if (w != "bf16" && w != "q8" && w != "q4" && w != "q4s")
      fail("", "--synth-weights", "unknown weights '" + w + "'", "use bf16, q8, q4 or q4s (comma list)");
  if (!p.synthetic && !(p.synth_weights.size() == 1 && p.synth_weights[0] == "bf16"))
    fail("", "--synth-weights", "applies to the synthetic model, and --no-synthetic drops it", "drop one of the two");
  for (const auto* list : {&p.routings, &p.model_routings})
    for (const auto& r : *list)
      if (r != "token" && r != "block") fail("", "--routing", "unknown routing '" + r + "'", "use token, block or token,block");
  std::vector<ServeBenchRow> rows;
  prof::set_enabled(true);
  auto defaults = [&](int64_t mask) {
    ApiDefaults d;
    d.model_id = "bench";
    d.params.gen_length = p.max_tokens;
    d.params.block_length = p.block_length;
    d.params.steps = p.steps;
    d.params.mask_id = mask;
    d.params.eos_id = -2;
    d.max_n = 1;
    return d;
  };
  for (const auto& w : p.synthetic ? p.synth_weights : std::vector<std::string>{}) {
    const auto cfg = bench::synthetic_llada2_config(p.synth_moe_layers, p.synth_vocab);
    Loaded L;
    L.model = bench::make_synthetic_model(cfg, p.seed);
    L.tok = std::make_unique<IdTokenizer>(cfg.vocab_size, static_cast<int32_t>(cfg.mask_token_id));
    L.defaults = defaults(cfg.mask_token_id);
    std::string weights = "bf16";
    kernels::set_quant_repack(false);
    if (w != "bf16") {  // the same random weights, packed in place
      QuantizeParams qp;
      qp.format = w;
      const int64_t n = quantize_model(*L.model, qp);
      weights = io::quant_format_name(quantize_format(qp));
      const std::string copies = setup_quant_copies(*L.model, "auto");  // as `ecdlm serve`
      LOG_INFO("bench serve: synthetic model in " << weights << ", " << n << " weights packed; output-lane copies "
                                                  << copies);
    }
    bench_model("synthetic LLaDA2.0-mini-shaped (" + std::to_string(p.synth_moe_layers) + " MoE layers, " + weights + ")",
                std::move(L), p, rows, weights);
    kernels::set_quant_repack(false);
  }
  if (!p.model_dir.empty()) {
    const auto cfg = ModelConfig::load(p.model_dir);
    // Without --dtype one run in the stored dtype, named by it (as `ecdlm serve` loads it).
    std::vector<std::string> dtypes = p.dtypes;
    if (dtypes.empty()) dtypes.push_back(stored_dtype_name(p.model_dir));
    for (const auto& dt : dtypes) {
      Loaded L;
      L.tok = text::load_tokenizer(p.model_dir);
      check_tokenizer_fits(*L.tok, cfg, p.model_dir);
      const auto mask = require_mask_id(p.model_dir, cfg, L.tok.get());
      LoadOptions lo;
      lo.dtype = dt == "bf16" ? torch::kBFloat16 : torch::kFloat32;
      lo.map_weights = true;  // as `ecdlm serve`: weights used in place where the dtype matches
      LOG_INFO("bench serve: " << p.model_dir << " in " << dt << (p.dtypes.empty() ? " (its stored dtype)" : " (--dtype)"));
      L.model = load_model(p.model_dir, nullptr, lo);
      // A quantized checkpoint on the copies `ecdlm serve` builds by default (--quant-repack auto).
      const std::string copies = setup_quant_copies(*L.model, "auto");
      if (!copies.empty()) LOG_INFO("bench serve: quantized kernel " << kernels::quant_kernel_name(kernels::quant_kernel_backend())
                                                                     << "; output-lane copies " << copies);
      L.defaults = defaults(mask.id);
      auto q = p;
      q.routings = p.model_routings;
      bench_model(p.model_dir + " (" + dt + (copies.empty() ? "" : " + quantized weights") + ")", std::move(L), q, rows);
      kernels::set_quant_repack(false);
    }
  }
  return rows;
}

json to_json(const std::vector<ServeBenchRow>& rows) {
  json out = json::array();
  for (const auto& r : rows)
    out.push_back({{"model", r.model}, {"routing", r.routing}, {"dtype", r.dtype}, {"clients", r.clients}, {"requests", r.requests},
                   {"tokens", r.tokens}, {"seconds", r.seconds}, {"tokens_per_s", r.tokens_per_s}, {"speedup", r.speedup},
                   {"ttfb_p50_ms", r.ttfb_p50_ms}, {"latency_p50_ms", r.latency_p50_ms},
                   {"latency_p99_ms", r.latency_p99_ms}, {"batch_rows_mean", r.batch_rows_mean}, {"step_ms", r.step_ms},
                   {"unique_experts_per_block", r.unique_experts_per_block}});
  for (size_t i = 0; i < rows.size(); ++i)
    for (int k = 0; k < prof::kParts && k < static_cast<int>(rows[i].part_ms.size()); ++k)
      out[i]["step_split_ms"][prof::part_name(static_cast<prof::Part>(k))] = rows[i].part_ms[static_cast<size_t>(k)];
  return out;
}

std::string to_markdown(const std::vector<ServeBenchRow>& rows, const ServeBenchParams& p) {
  std::ostringstream o, sampling;
  if (p.temperature > 0) sampling << "temperature " << p.temperature << ", request i with seed i";
  else sampling << "greedy";
  o << "Requests per level: " << p.requests << " (prompts of 16-96 tokens, " << p.max_tokens
    << " generated tokens each, " << sampling.str() << ", EOS ignored), block " << p.block_length << ", " << p.steps
    << " steps per block, max batch " << p.max_batch << ". Speed-up: aggregate tokens/s over the 1-client level "
    << "(the same requests one after another).\n\n"
    << "| model | routing | clients | tokens/s | speed-up | time to first block p50 (ms) | latency p50 (ms) | "
       "latency p99 (ms) | rows per step | ms per step | unique experts per block |\n"
    << "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  char buf[512];
  for (const auto& r : rows) {
    std::snprintf(buf, sizeof buf, "| %s | %s | %lld | %.1f | %.2fx | %.0f | %.0f | %.0f | %.2f | %.0f | %.1f |\n",
                  r.model.c_str(), r.routing.c_str(), static_cast<long long>(r.clients), r.tokens_per_s, r.speedup,
                  r.ttfb_p50_ms, r.latency_p50_ms, r.latency_p99_ms, r.batch_rows_mean, r.step_ms,
                  r.unique_experts_per_block);
    o << buf;
  }
  // Where a step's time goes (model forward parts; "rest": sampling, cache upkeep, batching).
  o << "\nPer step (ms): ";
  for (int k = 0; k < prof::kParts; ++k) o << (k ? ", " : "") << prof::part_name(static_cast<prof::Part>(k));
  o << ", rest.\n\n| model | routing | clients | rows per step | ms per step |";
  for (int k = 0; k < prof::kParts; ++k) o << " " << prof::part_name(static_cast<prof::Part>(k)) << " |";
  o << " rest |\n|---|---|---:|---:|---:|";
  for (int k = 0; k <= prof::kParts; ++k) o << "---:|";
  o << "\n";
  for (const auto& r : rows) {
    std::snprintf(buf, sizeof buf, "| %s | %s | %lld | %.2f | %.0f |", r.model.c_str(), r.routing.c_str(),
                  static_cast<long long>(r.clients), r.batch_rows_mean, r.step_ms);
    o << buf;
    double sum = 0;
    for (double ms : r.part_ms) {
      std::snprintf(buf, sizeof buf, " %.1f |", ms);
      o << buf;
      sum += ms;
    }
    std::snprintf(buf, sizeof buf, " %.1f |\n", std::max(0.0, r.step_ms - sum));
    o << buf;
  }
  return o.str();
}

}  // namespace ecdlm::serve
