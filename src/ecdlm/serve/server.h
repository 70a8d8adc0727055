// `ecdlm serve`: an OpenAI-compatible HTTP server (cpp-httplib) over the continuous batcher.
// Endpoints: GET / (the live page), GET /health, GET /metrics (Prometheus text), GET /v1/models,
// POST /v1/chat/completions, POST /v1/completions. /v1/* need `Authorization: Bearer KEY` when an
// API key is set. The server listens first (GET /health answers 503 "loading" until the model is
// in), then serves until SIGINT / SIGTERM: it stops taking requests (503), lets running ones finish
// for up to shutdown_timeout seconds, cancels the rest, and returns.
#pragma once
#include <functional>
#include <memory>
#include <string>

#include "ecdlm/serve/api.h"
#include "ecdlm/serve/scheduler.h"

namespace ecdlm::serve {

struct ServeParams {
  std::string host = "127.0.0.1";
  int port = 8080;                       // 0: a free port (printed)
  SchedulerParams sched;
  size_t max_body_bytes = 1 << 20;       // larger bodies: 413
  std::string api_key;                   // "" = no auth
  double shutdown_timeout = 30.0;        // seconds to finish running requests on SIGINT / SIGTERM
  int http_threads = 64;                 // connections handled at once (streams hold one each)
};

// What the loader hands over once the model is in memory.
struct Loaded {
  MoeDlm model{nullptr};
  std::unique_ptr<text::Tokenizer> tok;
  ApiDefaults defaults;
};

// The server as an object (run_server below, and `ecdlm bench serve` in-process).
class Server {
 public:
  explicit Server(const ServeParams& sp);
  ~Server();  // stop()
  // Binds (UserError naming --port when it cannot) and starts serving; /v1 answers 503 until ready().
  int listen();
  void ready(Loaded loaded);  // the model is in: /v1 serves it
  // Stops taking requests, lets running ones finish for up to sp.shutdown_timeout s (then cancels
  // them), stops the HTTP server and joins its threads.
  void stop();
  const Loaded& loaded() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Binds, prints "listening on http://HOST:PORT" (stdout and the log), calls `load`, serves until
// SIGINT / SIGTERM. UserError when the address cannot be bound or load fails. Returns 0.
int run_server(const ServeParams& sp, const std::function<Loaded()>& load);

}  // namespace ecdlm::serve
