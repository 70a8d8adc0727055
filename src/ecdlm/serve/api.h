// The OpenAI request / response schema for /v1/chat/completions and /v1/completions: request
// bodies become scheduler Jobs (every field checked, unsupported ones refused naming the field),
// results become the OpenAI JSON objects (non-streamed) or SSE chunks (streamed).
#pragma once
#include <nlohmann/json.hpp>

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "ecdlm/model/moe_dlm.h"
#include "ecdlm/serve/scheduler.h"
#include "ecdlm/text/tokenizer.h"

namespace ecdlm::serve {

// What the server decodes with unless a request overrides it (`ecdlm` object, max_tokens, ...).
struct ApiDefaults {
  std::string model_id;
  gen::ThresholdParams params;          // gen_length = default max_tokens; mask id resolved; routing
  std::vector<int64_t> chat_stop_ids;   // <|role_end|>, eos, pad; empty: no chat template
  bool chat = false;                    // the tokenizer encodes the LLaDA2 chat template
  int64_t max_n = 8;
};

// An HTTP error with an OpenAI error object.
struct ApiError : std::runtime_error {
  ApiError(int status, std::string message, std::string param = "", std::string type = "invalid_request_error")
      : std::runtime_error(message), status(status), param(std::move(param)), type(std::move(type)) {}
  int status;
  std::string param, type;
};
nlohmann::json error_body(const std::string& message, const std::string& type, const std::string& param);

struct RequestInfo {
  bool chat = false, stream = false, include_usage = false;
  std::string id;        // chatcmpl-... / cmpl-...
  int64_t created = 0;   // unix seconds
};

// Parses and checks a request body (ApiError 400 naming the field, 404 for an unknown model) and
// builds its job: prompt ids (chat template for messages), per-choice params (seed + index),
// stop strings, the batch settings.
std::shared_ptr<Job> build_job(const std::string& body, bool chat, const ApiDefaults& d, const MoeDlm& model,
                               const text::Tokenizer& tok, RequestInfo& info);

// The whole (non-streamed) response of a finished job.
nlohmann::json response_json(const Job& job, const RequestInfo& info, const ApiDefaults& d);
// One SSE "data: ..." event (with the blank line) per update; the usage chunk; [DONE].
std::string sse_first_chunks(const Job& job, const RequestInfo& info, const ApiDefaults& d);
std::string sse_update(const Update& u, const RequestInfo& info, const ApiDefaults& d);
std::string sse_usage(const Job& job, const RequestInfo& info, const ApiDefaults& d);
nlohmann::json usage_json(const Job& job);

}  // namespace ecdlm::serve
