#include "ecdlm/serve/scheduler.h"

#include <algorithm>

#include "ecdlm/text/canvas.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/log.h"

namespace ecdlm::serve {
namespace {

// Bytes of `s` that form complete UTF-8 characters (a block can end inside a multi-byte one).
size_t complete_utf8(const std::string& s) {
  const std::string repl = "\xEF\xBF\xBD";  // what a decoder makes of an unfinished sequence
  size_t n = s.size();
  while (n >= 3 && s.compare(n - 3, 3, repl) == 0) n -= 3;
  return n;
}

void set_max(std::atomic<int64_t>& a, int64_t v) {
  int64_t cur = a.load();
  while (v > cur && !a.compare_exchange_weak(cur, v)) {
  }
}

// Ends job without an answer: its handler answers 500 with `error`.
void mark_failed(Job& job, const std::string& error) {
  std::lock_guard<std::mutex> jl(job.mu);
  job.failed = true;
  job.error = error;
  job.cv.notify_all();
}

}  // namespace

Scheduler::Scheduler(MoeDlm& model, const text::Tokenizer& tok, const SchedulerParams& sp)
    : model_(model), tok_(tok), sp_(sp) {
  thread_ = std::thread([this] { loop(); });
}

Scheduler::~Scheduler() { shutdown(0.0); }

Scheduler::Admit Scheduler::submit(const std::shared_ptr<Job>& job) {
  std::lock_guard<std::mutex> lk(mu_);
  if (stopping_) return Admit::kShuttingDown;
  const auto n = static_cast<int64_t>(job->params.size());
  if (m_.queue_rows.load() + n > sp_.max_queue) return Admit::kQueueFull;
  job->choices.resize(job->params.size());
  job->t_submit = Clock::now();
  queue_.push_back(job);
  m_.queue_rows += n;
  cv_.notify_all();
  return Admit::kOk;
}

void Scheduler::shutdown(double timeout_s) {
  {
    std::unique_lock<std::mutex> lk(mu_);
    if (exit_ && !thread_.joinable()) return;
    stopping_ = true;
    cv_.notify_all();
    const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
    cv_.wait_until(lk, deadline, [&] { return queue_.empty() && rows_.empty(); });
    if (!queue_.empty() || !rows_.empty())
      LOG_WARN("serve: shutdown timeout: cancelling " << rows_.size() << " running and " << queue_.size() << " queued requests");
    cancel_all_ = true;
    exit_ = true;
    cv_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
}

// Under mu_: waiting jobs join while the batch has room for all their rows (in order).
void Scheduler::admit_locked() {
  while (!queue_.empty()) {
    auto job = queue_.front();
    if (job->client_gone.load()) {
      queue_.pop_front();
      m_.queue_rows -= static_cast<int64_t>(job->params.size());
      std::lock_guard<std::mutex> jl(job->mu);
      job->failed = true;
      job->cv.notify_all();
      continue;
    }
    const auto n = static_cast<int64_t>(job->params.size());
    if (static_cast<int64_t>(rows_.size()) + n > sp_.max_batch && !rows_.empty()) break;
    gen::ContinuousBatcher* b = nullptr;
    for (auto& k : batchers_)
      if (k->compatible(job->params[0])) b = k.get();
    if (!b) {
      batchers_.push_back(std::make_unique<gen::ContinuousBatcher>(model_, job->batch));
      b = batchers_.back().get();
      if (batchers_.size() > 1)
        LOG_INFO("serve: a request with block length " << job->batch.block_length
                 << " and its own routing runs beside the others (" << batchers_.size() << " kinds this round)");
    }
    queue_.pop_front();
    m_.queue_rows -= n;
    for (int c = 0; c < static_cast<int>(n); ++c) {
      // The handler validated the params against the model: a throw here is a bug, not input,
      // and it fails this request only.
      try {
        const int64_t id = b->add(job->prompt, job->params[static_cast<size_t>(c)]);
        rows_[{b, id}] = {job, c};
        ++m_.rows_started;
      } catch (const std::exception& e) {
        LOG_WARN("serve: a request could not join the batch: " << e.what());
        fail_job_locked(job, std::string("the request could not start: ") + e.what());
        break;
      }
    }
  }
}

void Scheduler::fail_job_locked(const std::shared_ptr<Job>& job, const std::string& error) {
  for (auto it = rows_.begin(); it != rows_.end();) {
    if (it->second.first != job) {
      ++it;
      continue;
    }
    it->first.first->cancel(it->first.second);  // leaves the batch at the next step, its KV cache freed
    it = rows_.erase(it);
  }
  mark_failed(*job, error);
}

void Scheduler::finish_choice(Job& job, int c, const std::string& reason) {
  auto& ch = job.choices[static_cast<size_t>(c)];
  if (!ch.finish_reason.empty()) return;
  ch.finish_reason = reason;
  ++job.finished;
  Update u;
  u.kind = Update::kFinish;
  u.choice = c;
  u.finish_reason = reason;
  job.updates.push_back(u);
}

void Scheduler::apply(gen::ContinuousBatcher* b, const gen::RowEvent& ev) {
  auto it = rows_.find({b, ev.id});
  if (it == rows_.end()) return;
  auto job = it->second.first;
  const int c = it->second.second;
  try {
    apply_event(b, ev, it, job, c);
  } catch (const std::exception& e) {
    // Turning a step's tokens into an answer failed (a bug): that request ends with a 500, the
    // scheduler thread and every other request go on.
    LOG_WARN("serve: a request failed: " << e.what());
    fail_job_locked(job, std::string("generation failed: ") + e.what());
  }
}

void Scheduler::apply_event(gen::ContinuousBatcher* b, const gen::RowEvent& ev, RowMap::iterator it,
                            const std::shared_ptr<Job>& job, int c) {
  if (ev.finished) {
    rows_.erase(it);
    if (ev.result.cancelled) {
      ++m_.rows_cancelled;
      if (job->client_gone.load())
        LOG_INFO("serve: row " << ev.id << " cancelled (client gone) at block " << ev.block << ", its KV cache freed");
    } else {
      ++m_.rows_finished;
    }
  }
  std::lock_guard<std::mutex> jl(job->mu);
  ++job->steps;
  job->cv.notify_all();
  auto& ch = job->choices[static_cast<size_t>(c)];
  if (!ch.finish_reason.empty()) return;  // ended by a stop string: the row was cancelled for that
  const auto& p = job->params[static_cast<size_t>(c)];
  if (ev.stepped) {
    ++ch.forwards;
    ++ch.block_forwards;
    ch.unique_sum += ev.unique_experts;
    ch.block_unique_sum += ev.unique_experts;
  }
  if (job->canvas && !ev.canvas.empty() && !ev.finished) {
    Update u;
    u.kind = Update::kCanvas;
    u.choice = c;
    u.block = ev.block;
    u.step = ch.forwards;
    u.text = text::render_canvas(tok_, ev.canvas, p.mask_id >= 0 ? p.mask_id : model_->config().mask_token_id);
    job->updates.push_back(std::move(u));
  }
  // Only a block that became final, or the row's end, needs the stop ids.
  const auto stops = ev.final_tokens.empty() && !ev.finished ? std::vector<int64_t>()
                                                             : gen::output_stop_ids(p, model_->config());
  bool hit_stop_id = false;
  for (auto t : ev.final_tokens) {
    ch.tokens.push_back(t);
    if (hit_stop_id) continue;
    if (std::find(stops.begin(), stops.end(), t) != stops.end()) hit_stop_id = true;
    else ch.body.push_back(static_cast<int32_t>(t));
  }
  m_.generated_tokens += static_cast<int64_t>(ev.final_tokens.size());
  if (!ev.final_tokens.empty() || ev.finished) {
    std::string text = tok_.decode(ch.body);
    bool stop_string = false;
    for (const auto& s : job->stop) {
      const auto at = text.find(s);
      if (!s.empty() && at != std::string::npos) {
        text.resize(at);
        stop_string = true;
      }
    }
    ch.text = text;
    size_t ready = ev.finished || stop_string ? text.size() : complete_utf8(text);
    if (!ev.finished && !stop_string && !job->stop.empty()) {
      // Hold back what could be the start of a stop string that the next block completes.
      size_t longest = 0;
      for (const auto& s : job->stop) longest = std::max(longest, s.size());
      size_t cut = text.size() > longest - 1 ? text.size() - (longest - 1) : 0;
      while (cut > 0 && cut < text.size() && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
      ready = std::min(ready, cut);
    }
    if (ready > ch.sent) {
      Update u;
      u.kind = Update::kText;
      u.choice = c;
      u.block = ev.block;
      u.text = text.substr(ch.sent, ready - ch.sent);
      const double secs = std::chrono::duration<double>(Clock::now() - job->t_submit).count();
      u.tokens_per_s = secs > 0 ? static_cast<double>(ch.tokens.size()) / secs : 0.0;
      u.unique_experts = ch.block_forwards ? ch.block_unique_sum / static_cast<double>(ch.block_forwards) : 0.0;
      ch.block_unique_sum = 0.0;
      ch.block_forwards = 0;
      job->updates.push_back(std::move(u));
      ch.sent = ready;
    }
    if (stop_string) {
      b->cancel(ev.id);  // leaves at the next step
      finish_choice(*job, c, "stop");
    }
  }
  if (ev.finished && ch.finish_reason.empty()) {
    const bool stopped = ev.result.eos_stopped ||
                         (!ev.result.tokens.empty() &&
                          std::find(stops.begin(), stops.end(), ev.result.tokens.back()) != stops.end());
    if (ev.result.cancelled) job->failed = job->failed || !job->client_gone.load();
    finish_choice(*job, c, stopped ? "stop" : "length");
  }
  job->cv.notify_all();
}

void Scheduler::loop() {
  for (;;) {
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return exit_ || !queue_.empty() || !rows_.empty(); });
      if (cancel_all_) {
        for (auto& [key, jc] : rows_) key.first->cancel(key.second);
        for (auto& job : queue_) {
          m_.queue_rows -= static_cast<int64_t>(job->params.size());
          std::lock_guard<std::mutex> jl(job->mu);
          job->failed = true;
          job->cv.notify_all();
        }
        queue_.clear();
      }
      if (exit_ && rows_.empty()) break;
      for (auto& [key, jc] : rows_)
        if (jc.first->client_gone.load()) key.first->cancel(key.second);
      if (!cancel_all_) admit_locked();
      if (rows_.empty()) {
        batchers_.clear();
        m_.running_kinds = 0;
        cv_.notify_all();
        continue;
      }
    }
    // One step of every kind (the scheduler thread alone touches the batchers).
    for (size_t k = 0; k < batchers_.size(); ++k) {
      auto* b = batchers_[k].get();
      gen::StepStats st;
      std::vector<gen::RowEvent> events;
      try {
        events = b->step(&st);
      } catch (const std::exception& e) {
        // A failed forward (out of memory, a bug): fail this kind's requests, keep serving.
        LOG_WARN("serve: step failed: " << e.what());
        std::lock_guard<std::mutex> lk(mu_);
        for (auto it = rows_.begin(); it != rows_.end();) {
          if (it->first.first != b) {
            ++it;
            continue;
          }
          mark_failed(*it->second.first, std::string("generation failed: ") + e.what());
          it = rows_.erase(it);
        }
        batchers_[k] = std::make_unique<gen::ContinuousBatcher>(model_, b->params());  // drops the failed rows
        cv_.notify_all();
        continue;
      }
      std::lock_guard<std::mutex> lk(mu_);
      for (const auto& ev : events) apply(b, ev);
      if (st.rows > 0) {
        ++m_.steps;
        m_.forwards += st.forwards;
        m_.forward_us += static_cast<int64_t>(st.ms * 1000.0);
        m_.batch_rows_sum += st.rows;
        set_max(m_.batch_rows_max, st.rows);
        const auto u = static_cast<int64_t>(st.unique_experts_per_block * 1000.0);
        m_.unique_milli_sum += u;
        m_.unique_milli_last = u;
        ++m_.unique_n;
      }
    }
    std::lock_guard<std::mutex> lk(mu_);
    // Kinds without rows go (a later request of that kind starts a fresh one).
    batchers_.erase(std::remove_if(batchers_.begin(), batchers_.end(), [](const auto& b) { return b->rows() == 0; }),
                    batchers_.end());
    int64_t running = 0, kv = 0;
    for (const auto& b : batchers_) running += b->rows(), kv += b->kv_bytes();
    m_.running_rows = running;
    m_.kv_bytes = kv;
    m_.running_kinds = static_cast<int64_t>(batchers_.size());
    cv_.notify_all();
  }
}

}  // namespace ecdlm::serve
