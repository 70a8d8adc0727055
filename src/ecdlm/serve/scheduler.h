// The server's scheduler: one thread owns the model and the continuous batcher
// (generate/continuous.h). HTTP handlers submit Jobs (one request, n choices = n rows) to a bounded
// queue; between steps the scheduler moves waiting jobs into the batch while it has room (whole
// jobs, first come first served), runs one step, turns the rows' events into text deltas per
// choice (stop strings cut here), and wakes the handlers. Finished rows leave at once; a job whose
// client went away has its rows cancelled at the next step (their KV caches freed).
// A batcher's forward has one block length and one MoE routing: requests that override them
// (ecdlm.block_length, ecdlm.moe_routing) get a batcher of their own kind, and every round steps
// each kind once, so they run beside the others instead of waiting for the batch to drain;
// --max-batch bounds the rows of all kinds together.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "ecdlm/generate/continuous.h"
#include "ecdlm/text/tokenizer.h"

namespace ecdlm::serve {

using Clock = std::chrono::steady_clock;

// One streamed piece of a choice, in order.
struct Update {
  enum Kind { kText, kCanvas, kFinish } kind = kText;
  int choice = 0;
  std::string text;           // kText: new text; kCanvas: the current block, masks as U+2591
  int64_t block = 0, step = 0;
  std::string finish_reason;  // kFinish: "stop" | "length"
  double tokens_per_s = 0.0, unique_experts = 0.0;  // kText: the choice so far / this block's mean
};

struct Job {
  // Set by the handler before submit.
  std::vector<int64_t> prompt;
  std::vector<gen::ThresholdParams> params;  // one per choice (seed + index)
  gen::BatcherParams batch;                  // block length + routing: rows batch only with equal ones
  std::vector<std::string> stop;             // stop strings
  bool canvas = false;                       // send kCanvas updates
  std::atomic<bool> client_gone{false};      // set by the handler: cancel at the next step

  // Written by the scheduler under mu.
  struct Choice {
    std::vector<int64_t> tokens;   // generated ids (final), stop id included
    std::vector<int32_t> body;     // ids of the text (stop ids left out)
    std::string text;              // the answer so far (cut at a stop string)
    size_t sent = 0;               // bytes of text already turned into updates
    std::string finish_reason;     // "" while running
    double unique_sum = 0.0, block_unique_sum = 0.0;  // over all forwards / the current block's
    int64_t forwards = 0, block_forwards = 0;
  };
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Update> updates;
  std::vector<Choice> choices;
  int finished = 0;
  uint64_t steps = 0;              // events seen (one per step of a running row): wakes streams
  bool failed = false;             // ended without an answer: shut down, or `error`
  std::string error;               // why it failed, when not the shutdown (a failed step)
  Clock::time_point t_submit;

  bool done() const { return failed || finished == static_cast<int>(choices.size()); }
};

struct SchedulerParams {
  int64_t max_batch = 16;  // rows decoding at once
  int64_t max_queue = 64;  // rows waiting; more answer 429
};

struct Metrics {
  std::atomic<int64_t> queue_rows{0}, running_rows{0}, generated_tokens{0}, forwards{0}, steps{0};
  std::atomic<int64_t> batch_rows_sum{0}, batch_rows_max{0}, rows_started{0}, rows_finished{0}, rows_cancelled{0};
  std::atomic<int64_t> kv_bytes{0}, forward_us{0};
  std::atomic<int64_t> running_kinds{0};  // batchers held: kinds of (block length, routing) running side by side
  // Unique experts per layer per block, x1000 (integers: atomics without compare-exchange loops).
  std::atomic<int64_t> unique_milli_sum{0}, unique_milli_last{0}, unique_n{0};
};

class Scheduler {
 public:
  Scheduler(MoeDlm& model, const text::Tokenizer& tok, const SchedulerParams& sp);
  ~Scheduler();

  enum class Admit { kOk, kQueueFull, kShuttingDown };
  Admit submit(const std::shared_ptr<Job>& job);
  // Stops accepting, lets running and queued jobs finish for up to timeout_s, then cancels what is
  // left (those jobs fail) and joins the thread.
  void shutdown(double timeout_s);
  const Metrics& metrics() const { return m_; }
  const SchedulerParams& params() const { return sp_; }

 private:
  // (batcher, its row id) -> job, choice
  using RowMap = std::map<std::pair<gen::ContinuousBatcher*, int64_t>, std::pair<std::shared_ptr<Job>, int>>;
  void loop();
  void admit_locked();
  void apply(gen::ContinuousBatcher* b, const gen::RowEvent& ev);
  void apply_event(gen::ContinuousBatcher* b, const gen::RowEvent& ev, RowMap::iterator it,
                   const std::shared_ptr<Job>& job, int c);
  void finish_choice(Job& job, int c, const std::string& reason);
  // Under mu_: ends job with `error` (a 500 for its client), its rows cancelled and forgotten.
  void fail_job_locked(const std::shared_ptr<Job>& job, const std::string& error);

  MoeDlm& model_;
  const text::Tokenizer& tok_;
  SchedulerParams sp_;
  Metrics m_;
  std::vector<std::unique_ptr<gen::ContinuousBatcher>> batchers_;  // one per kind (block length, routing)
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> queue_;
  RowMap rows_;
  bool stopping_ = false, cancel_all_ = false, exit_ = false;
  std::thread thread_;
};

}  // namespace ecdlm::serve
