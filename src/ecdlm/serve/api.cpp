#include "ecdlm/serve/api.h"

#include <atomic>
#include <chrono>
#include <set>
#include <sstream>

#include "ecdlm/text/chat.h"
#include "ecdlm/util/error.h"

namespace ecdlm::serve {
namespace {

using nlohmann::json;

[[noreturn]] void bad(const std::string& param, const std::string& message) { throw ApiError(400, message, param); }

int64_t get_int(const json& v, const std::string& name, int64_t lo, int64_t hi) {
  if (!v.is_number_integer()) bad(name, "'" + name + "' must be an integer");
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))  // would wrap negative
    bad(name, "'" + name + "' is " + std::to_string(v.get<uint64_t>()) + ", outside [" + std::to_string(lo) + ", " +
                  std::to_string(hi) + "]");
  const auto x = v.get<int64_t>();
  if (x < lo || x > hi)
    bad(name, "'" + name + "' is " + std::to_string(x) + ", outside [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return x;
}

double get_num(const json& v, const std::string& name) {
  if (!v.is_number()) bad(name, "'" + name + "' must be a number");
  return v.get<double>();
}

// A number in [lo, hi] ((lo, hi] with open_lo), named in the error as the request spells it.
double get_num(const json& v, const std::string& name, double lo, double hi, bool open_lo = false) {
  const double x = get_num(v, name);
  if ((open_lo ? !(x > lo) : !(x >= lo)) || !(x <= hi)) {
    std::ostringstream o;
    o << "'" << name << "' is " << v.dump() << ", outside " << (open_lo ? "(" : "[") << lo << ", " << hi << "]";
    bad(name, o.str());
  }
  return x;
}

bool get_bool(const json& v, const std::string& name) {
  if (!v.is_boolean()) bad(name, "'" + name + "' must be a boolean");
  return v.get<bool>();
}

std::string get_str(const json& v, const std::string& name) {
  if (!v.is_string()) bad(name, "'" + name + "' must be a string");
  return v.get<std::string>();
}

void only_fields(const json& obj, const std::set<std::string>& allowed, const std::string& prefix) {
  for (const auto& [k, v] : obj.items())
    if (!allowed.count(k)) {
      std::string list;
      for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
      bad(prefix + k, "unsupported field '" + prefix + k + "': ecdlm serve does not implement it (supported: " + list + ")");
    }
}

// A message's content: a string, or an array of {"type": "text", "text": ...} parts.
std::string message_content(const json& c, const std::string& name) {
  if (c.is_string()) return c.get<std::string>();
  if (!c.is_array()) bad(name, "'" + name + "' must be a string or an array of text parts");
  std::string out;
  for (size_t i = 0; i < c.size(); ++i) {
    const auto part = name + "[" + std::to_string(i) + "]";
    if (!c[i].is_object()) bad(part, "'" + part + "' must be an object");
    only_fields(c[i], {"type", "text"}, part + ".");
    if (!c[i].contains("type") || c[i]["type"] != "text") bad(part + ".type", "only text parts are supported");
    out += get_str(c[i].value("text", json()), part + ".text");
  }
  return out;
}

std::string new_id(const char* prefix) {
  static std::atomic<uint64_t> counter{0};
  const auto t = std::chrono::system_clock::now().time_since_epoch().count();
  char buf[64];
  std::snprintf(buf, sizeof buf, "%s-%llx%04llx", prefix, static_cast<unsigned long long>(t & 0xffffffffffULL),
                static_cast<unsigned long long>(counter++ & 0xffff));
  return buf;
}

void apply_ecdlm(const json& e, gen::ThresholdParams& p, bool& canvas, const ModelConfig& cfg) {
  if (!e.is_object()) bad("ecdlm", "'ecdlm' must be an object");
  only_fields(e, {"threshold", "steps", "block_length", "moe_routing", "block_top_p", "decoder", "eos_early_stop",
                  "ignore_eos", "top_k", "stream_canvas", "confidence"},
              "ecdlm.");
  if (e.contains("threshold")) p.threshold = get_num(e["threshold"], "ecdlm.threshold", 0.0, 1.0);
  if (e.contains("steps")) p.steps = get_int(e["steps"], "ecdlm.steps", 1, 1 << 20);
  if (e.contains("block_length")) {
    // Settings tied to the server's block follow the request's: one step per token (LLaDA2's
    // default, unless the request gives steps) and a coreset voted once per block (dMoE's). A
    // server setting apart from its block stays as set.
    const int64_t server_block = p.block_length;
    p.block_length = get_int(e["block_length"], "ecdlm.block_length", 1, 1 << 20);
    if (!e.contains("steps") && p.steps == server_block) p.steps = p.block_length;
    if (p.routing.block_chunk == server_block) p.routing.block_chunk = p.block_length;
    if (p.routing.des_chunk == server_block) p.routing.des_chunk = p.block_length;
  }
  if (e.contains("top_k")) p.top_k = get_int(e["top_k"], "ecdlm.top_k", 0, cfg.vocab_size);
  if (e.contains("eos_early_stop")) p.eos_early_stop = get_bool(e["eos_early_stop"], "ecdlm.eos_early_stop");
  if (e.contains("ignore_eos") && get_bool(e["ignore_eos"], "ecdlm.ignore_eos")) p.eos_id = -2;  // no stop ids at all
  if (e.contains("stream_canvas")) canvas = get_bool(e["stream_canvas"], "ecdlm.stream_canvas");
  try {
    if (e.contains("moe_routing")) p.routing.policy = moe::parse_routing_policy(get_str(e["moe_routing"], "ecdlm.moe_routing"));
    if (e.contains("block_top_p")) p.routing.block_top_p = get_num(e["block_top_p"], "ecdlm.block_top_p", 0.0, 1.0, true);
    if (e.contains("confidence")) p.confidence = gen::parse_confidence(get_str(e["confidence"], "ecdlm.confidence"));
  } catch (const UserError& err) {
    bad("ecdlm", err.what());
  }
  if (e.contains("decoder")) {
    const auto d = get_str(e["decoder"], "ecdlm.decoder");
    if (d == "llada2") p.rule = gen::ThresholdRule::kLlada2;
    else if (d == "fast-dllm") p.rule = gen::ThresholdRule::kFastThreshold;
    else bad("ecdlm.decoder", "unknown decoder '" + d + "' (use llada2 or fast-dllm)");
  }
  if (p.rule == gen::ThresholdRule::kLlada2 && p.steps > p.block_length)
    bad("ecdlm.steps", "steps per block (" + std::to_string(p.steps) + ") exceed the block length " +
                           std::to_string(p.block_length));
}

json base_chunk(const RequestInfo& info, const ApiDefaults& d) {
  return {{"id", info.id},
          {"object", info.chat ? "chat.completion.chunk" : "text_completion"},
          {"created", info.created},
          {"model", d.model_id}};
}

// Generated text is valid UTF-8 (the tokenizer decodes bytes it cannot join as U+FFFD); replace,
// never throw, should a piece ever not be.
std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }
std::string sse(const json& j) { return "data: " + dump(j) + "\n\n"; }

}  // namespace

json error_body(const std::string& message, const std::string& type, const std::string& param) {
  return {{"error", {{"message", message}, {"type", type}, {"param", param.empty() ? json() : json(param)}, {"code", json()}}}};
}

std::shared_ptr<Job> build_job(const std::string& body, bool chat, const ApiDefaults& d, const MoeDlm& model,
                               const text::Tokenizer& tok, RequestInfo& info) {
  json b;
  try {
    b = json::parse(body);
  } catch (const json::parse_error& e) {
    bad("", std::string("malformed JSON body: ") + e.what());
  }
  if (!b.is_object()) bad("", "the body must be a JSON object");
  if (chat)
    only_fields(b, {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop", "n",
                    "stream", "stream_options", "ecdlm", "user"}, "");
  else
    only_fields(b, {"model", "prompt", "max_tokens", "temperature", "top_p", "seed", "stop", "n", "stream",
                    "stream_options", "ecdlm", "user"}, "");
  const auto& cfg = model->config();
  if (!b.contains("model")) bad("model", "'model' is required (GET /v1/models lists it)");
  const auto model_id = get_str(b["model"], "model");
  if (model_id != d.model_id)
    throw ApiError(404, "model '" + model_id + "' does not exist; this server serves '" + d.model_id + "'", "model");
  if (b.contains("user")) get_str(b["user"], "user");
  auto job = std::make_shared<Job>();
  gen::ThresholdParams p = d.params;
  info.chat = chat;
  info.id = new_id(chat ? "chatcmpl" : "cmpl");
  info.created = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();

  std::string prompt_field = chat ? "messages" : "prompt";
  if (chat) {
    if (!d.chat)
      bad("messages", "this model's tokenizer has no LLaDA2 chat template tokens; use /v1/completions with a prompt");
    if (!b.contains("messages") || !b["messages"].is_array()) bad("messages", "'messages' must be an array of messages");
    if (b["messages"].empty()) bad("messages", "'messages' is empty; send at least one user message");
    std::vector<text::ChatMessage> msgs;
    for (size_t i = 0; i < b["messages"].size(); ++i) {
      const auto& m = b["messages"][i];
      const auto name = "messages[" + std::to_string(i) + "]";
      if (!m.is_object()) bad(name, "'" + name + "' must be an object");
      only_fields(m, {"role", "content", "name"}, name + ".");
      const auto role = get_str(m.value("role", json()), name + ".role");
      if (role != "system" && role != "user" && role != "assistant")
        bad(name + ".role", "unknown role '" + role + "' (use system, user or assistant)");
      if (!m.contains("content")) bad(name + ".content", "'" + name + ".content' is required");
      msgs.push_back({role, message_content(m["content"], name + ".content")});
    }
    const auto text = text::apply_llada2_chat(msgs, /*add_generation_prompt=*/true);
    for (int32_t id : tok.encode(text, /*add_special_tokens=*/false)) job->prompt.push_back(id);
    p.stop_ids = d.chat_stop_ids;
  } else {
    if (!b.contains("prompt")) bad("prompt", "'prompt' is required");
    const auto& pr = b["prompt"];
    if (pr.is_string()) {
      for (int32_t id : tok.encode(pr.get<std::string>())) job->prompt.push_back(id);
    } else if (pr.is_array() && pr.size() == 1 && pr[0].is_string()) {
      for (int32_t id : tok.encode(pr[0].get<std::string>())) job->prompt.push_back(id);
    } else if (pr.is_array() && !pr.empty() && pr[0].is_number_integer()) {
      for (size_t i = 0; i < pr.size(); ++i)
        job->prompt.push_back(get_int(pr[i], "prompt[" + std::to_string(i) + "]", 0, cfg.vocab_size - 1));
    } else {
      bad("prompt", "'prompt' must be a string, an array of one string, or an array of token ids");
    }
    if (job->prompt.empty()) bad("prompt", "'prompt' is empty; threshold decoding continues a prompt");
  }
  if (b.contains("ecdlm")) apply_ecdlm(b["ecdlm"], p, job->canvas, cfg);
  if (b.contains("temperature")) p.temperature = get_num(b["temperature"], "temperature", 0.0, 2.0);
  if (b.contains("top_p")) p.top_p = get_num(b["top_p"], "top_p", 0.0, 1.0, true);
  if (b.contains("seed")) p.seed = static_cast<uint64_t>(get_int(b["seed"], "seed", 0, INT64_MAX));
  int64_t n = 1;
  if (b.contains("n")) n = get_int(b["n"], "n", 1, d.max_n);
  if (b.contains("stop") && !b["stop"].is_null()) {
    const auto& s = b["stop"];
    if (s.is_string()) {
      job->stop.push_back(s.get<std::string>());
    } else if (s.is_array() && s.size() <= 4) {
      for (size_t i = 0; i < s.size(); ++i) job->stop.push_back(get_str(s[i], "stop[" + std::to_string(i) + "]"));
    } else {
      bad("stop", "'stop' must be a string or an array of at most 4 strings");
    }
    for (const auto& s1 : job->stop)
      if (s1.empty()) bad("stop", "'stop' strings must not be empty");
  }
  if (b.contains("stream")) info.stream = get_bool(b["stream"], "stream");
  if (b.contains("stream_options") && !b["stream_options"].is_null()) {
    if (!info.stream) bad("stream_options", "'stream_options' is only allowed with stream: true");
    const auto& so = b["stream_options"];
    if (!so.is_object()) bad("stream_options", "'stream_options' must be an object");
    only_fields(so, {"include_usage"}, "stream_options.");
    if (so.contains("include_usage")) info.include_usage = get_bool(so["include_usage"], "stream_options.include_usage");
  }
  // Lengths: the prompt and the output, rounded up to whole blocks, must fit the context.
  const int64_t P = static_cast<int64_t>(job->prompt.size()), ctx = cfg.max_position_embeddings;
  if (ctx > 0 && p.block_length > ctx)
    bad("ecdlm.block_length", "'ecdlm.block_length' " + std::to_string(p.block_length) + " exceeds the model's context " +
                                  std::to_string(ctx));
  const int64_t room = ctx > 0 ? ctx / p.block_length * p.block_length - P : INT64_MAX;
  if (room < 1)
    bad(prompt_field, "the prompt has " + std::to_string(P) + " tokens; the model's context is " + std::to_string(ctx));
  const char* mt = b.contains("max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  if (b.contains("max_tokens") && b.contains("max_completion_tokens"))
    bad("max_tokens", "give one of 'max_tokens' and 'max_completion_tokens'");
  if (b.contains(mt) && !b[mt].is_null()) {
    p.gen_length = get_int(b[mt], mt, 1, INT64_MAX);
    if (p.gen_length > room)
      bad(mt, std::string("'") + mt + "' " + std::to_string(p.gen_length) + " does not fit the context: the prompt has " +
                  std::to_string(P) + " tokens and the context " + std::to_string(ctx) + " (at most " +
                  std::to_string(room) + " here)");
  } else {
    p.gen_length = std::min(p.gen_length, room);
  }
  try {
    gen::validate_params(p, cfg, P);
  } catch (const UserError& e) {
    bad("ecdlm", e.what());
  }
  for (int64_t i = 0; i < n; ++i) {
    auto pi = p;
    pi.seed = p.seed + static_cast<uint64_t>(i);  // as `ecdlm generate --num-samples`
    job->params.push_back(pi);
  }
  job->batch.block_length = p.block_length;
  job->batch.routing = p.routing;
  return job;
}

json usage_json(const Job& job) {
  int64_t completion = 0;
  for (const auto& c : job.choices) completion += static_cast<int64_t>(c.tokens.size());
  const auto P = static_cast<int64_t>(job.prompt.size());
  return {{"prompt_tokens", P}, {"completion_tokens", completion}, {"total_tokens", P + completion}};
}

json response_json(const Job& job, const RequestInfo& info, const ApiDefaults& d) {
  json choices = json::array(), extra = json::array();
  for (size_t i = 0; i < job.choices.size(); ++i) {
    const auto& c = job.choices[i];
    json ch = {{"index", i}, {"logprobs", json()}, {"finish_reason", c.finish_reason}};
    if (info.chat)
      ch["message"] = {{"role", "assistant"}, {"content", c.text}};
    else
      ch["text"] = c.text;
    choices.push_back(ch);
    extra.push_back({{"tokens", c.tokens}, {"forwards", c.forwards},
                     {"unique_experts_per_layer", c.forwards ? c.unique_sum / static_cast<double>(c.forwards) : 0.0}});
  }
  return {{"id", info.id},
          {"object", info.chat ? "chat.completion" : "text_completion"},
          {"created", info.created},
          {"model", d.model_id},
          {"choices", choices},
          {"usage", usage_json(job)},
          {"ecdlm", {{"choices", extra}, {"prompt_tokens", job.prompt}}}};
}

std::string sse_first_chunks(const Job& job, const RequestInfo& info, const ApiDefaults& d) {
  if (!info.chat) return "";
  std::string out;
  for (size_t i = 0; i < job.params.size(); ++i) {
    auto j = base_chunk(info, d);
    j["choices"] = json::array({{{"index", i}, {"delta", {{"role", "assistant"}, {"content", ""}}}, {"logprobs", json()},
                                 {"finish_reason", json()}}});
    if (info.include_usage) j["usage"] = json();
    out += sse(j);
  }
  return out;
}

std::string sse_update(const Update& u, const RequestInfo& info, const ApiDefaults& d) {
  auto j = base_chunk(info, d);
  json ch = {{"index", u.choice}, {"logprobs", json()}, {"finish_reason", json()}};
  json delta = json::object();
  if (u.kind == Update::kText) {
    delta["content"] = u.text;
    j["ecdlm"] = {{"block", u.block}, {"tokens_per_s", u.tokens_per_s}};
    if (u.unique_experts > 0) j["ecdlm"]["unique_experts_per_layer"] = u.unique_experts;
  } else if (u.kind == Update::kCanvas) {
    j["ecdlm"] = {{"canvas", u.text}, {"block", u.block}, {"step", u.step}};
  } else {
    ch["finish_reason"] = u.finish_reason;
  }
  if (info.chat)
    ch["delta"] = delta;
  else
    ch["text"] = delta.value("content", std::string());
  j["choices"] = json::array({ch});
  if (info.include_usage) j["usage"] = json();
  return sse(j);
}

std::string sse_usage(const Job& job, const RequestInfo& info, const ApiDefaults& d) {
  auto j = base_chunk(info, d);
  j["choices"] = json::array();
  j["usage"] = usage_json(job);
  return sse(j);
}

}  // namespace ecdlm::serve
