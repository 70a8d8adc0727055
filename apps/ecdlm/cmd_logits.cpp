// `ecdlm logits`: dump the f32 logits of one forward pass, for comparisons with other
// implementations (the golden fixtures, the official Python code), and time it (--reps, --json).
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <iostream>
#include <memory>

#include "commands.h"
#include "inference_opts.h"
#include "ecdlm/io/safetensors.h"
#include "ecdlm/model/checkpoint.h"
#include "ecdlm/text/tokenizer.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/profile.h"
#include "ecdlm/util/fs.h"
#include "ecdlm/util/log.h"

namespace ecdlm::cli {
namespace {

struct LogitsOptions {
  std::string model_dir, text, input, out, routing_out, attention = "bidirectional";
  int64_t block_length = 32, reps = 1;
  RoutingFlags routing;
  bool json = false;
};

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

// input_ids (int64 [B, T]) and the optional mask_ratio (f32 [B]) from IN.safetensors.
void read_input(const std::string& path, torch::Tensor& ids_BT, torch::Tensor& ratio_B) {
  if (!std::filesystem::is_regular_file(path))
    fail(path, "", "input file not found", "pass an existing .safetensors file to --input");
  auto st = io::SafetensorsFile::open(path);
  const auto* ids = st->find("input_ids");
  if (!ids) fail(path, "input_ids", "tensor missing", "store the token ids as int64 [B, T]");
  if (ids->dtype != io::DType::I64 || ids->shape.size() != 2)
    fail(path, "input_ids",
         "is " + io::dtype_name(ids->dtype) + " " + shape_str(ids->shape) +
             ", expected I64 of rank 2 [B, T]",
         "store the token ids as int64 [B, T]");
  if (ids->shape[0] == 0 || ids->shape[1] == 0)
    fail(path, "input_ids", "is empty " + shape_str(ids->shape), "");
  ids_BT = st->get("input_ids").clone();
  if (const auto* r = st->find("mask_ratio")) {
    if (r->dtype != io::DType::F32 || r->shape != std::vector<int64_t>{ids->shape[0]})
      fail(path, "mask_ratio",
           "is " + io::dtype_name(r->dtype) + " " + shape_str(r->shape) + ", expected F32 [" +
               std::to_string(ids->shape[0]) + "] (one ratio per row of input_ids)",
           "store mask_ratio as float32 [B] or leave it out");
    ratio_B = st->get("mask_ratio").clone();
  }
}

// Each MoE layer's routing decisions of the last forward, under layers.<i>.<field> (the RoutingPlan's
// defined tensors; bool coresets as u8): compare routing across weights, e.g. bf16 against q8.
void write_routing(const std::string& path, MoeDlm& model, const std::string& model_dir) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  int64_t i = 0;
  for (auto& blk : model->moe_blocks()) {
    const auto& plan = blk->last_plan();
    const std::string pre = "layers." + std::to_string(i++) + ".";
    for (const auto& [name, t] : {std::pair{"idx_TK", plan.idx_TK}, {"gate_TK", plan.gate_TK},
                                  {"token_EN", plan.token_EN}, {"gate_EN", plan.gate_EN},
                                  {"coreset_BCE", plan.coreset_BCE}})
      if (t.defined())
        out.emplace_back(pre + name, (t.scalar_type() == torch::kBool ? t.to(torch::kUInt8) : t).contiguous());
  }
  if (out.empty()) fail(model_dir, "", "has no MoE layer: no routing to write", "drop --routing-out");
  io::save_safetensors(path, out, {{"model", model_dir}});
}

int run_logits(const LogitsOptions& o, bool has_text, bool has_input) {
  if (has_text == has_input)
    fail("", "--text/--input", has_text ? "both given" : "neither given",
         "pass exactly one: --text STR or --input IN.safetensors");
  if (o.attention == "block-causal" && o.block_length <= 0)
    fail("", "--block-length", "must be > 0 for block-causal attention", "pass e.g. --block-length 32");
  torch::Tensor ids_BT, ratio_B;
  std::string source;
  if (has_input) {
    read_input(o.input, ids_BT, ratio_B);  // before loading the model: fail fast on bad input
    source = o.input;
  }
  if (o.reps < 1) fail("", "--reps", "must be >= 1", "pass 1 to time one forward");
  for (const auto* path : {&o.out, &o.routing_out}) {
    if (path->empty()) continue;
    const auto parent = std::filesystem::path(*path).parent_path();
    if (!parent.empty()) ensure_writable_dir(parent.string());  // before the load, not after
  }
  if (has_text) {  // the tokenizer before the model: a missing one fails fast
    auto tok = text::load_tokenizer(o.model_dir);
    std::vector<int64_t> ids;
    for (int32_t id : tok->encode(o.text)) ids.push_back(id);
    if (ids.empty())
      fail("", "--text", "encodes to no tokens", "pass non-empty text");
    ids_BT = torch::tensor(ids, torch::kInt64).view({1, static_cast<int64_t>(ids.size())});
    source = "--text";
  }
  LoadStats load_stats;
  std::string dtype;
  const auto t_load = std::chrono::steady_clock::now();
  auto model = load_for_routing(o.model_dir, o.routing, &load_stats, &dtype);
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();
  const auto& cfg = model->config();
  const auto routing = o.routing.resolve(cfg);
  const int64_t lo = ids_BT.min().item<int64_t>(), hi = ids_BT.max().item<int64_t>();
  if (lo < 0 || hi >= cfg.vocab_size)
    fail(source, "input_ids",
         "id " + std::to_string(lo < 0 ? lo : hi) + " outside the vocabulary [0, " + std::to_string(cfg.vocab_size) + ")",
         "use ids from this model's tokenizer");

  ForwardOptions opt;
  if (o.attention == "block-causal") opt.block_length = o.block_length;
  if (ratio_B.defined()) opt.mask_ratio_B = ratio_B;
  LOG_INFO("logits: " << o.model_dir << ", input " << shape_str(ids_BT.sizes().vec()) << " from "
                      << source << ", attention " << o.attention
                      << (opt.block_length > 0 ? " " + std::to_string(opt.block_length) : "")
                      << (ratio_B.defined() ? ", mask_ratio given" : ""));
  torch::NoGradGuard no_grad;
  model->eval();
  if (routing.policy != moe::RoutingPolicy::kToken) opt.routing = &routing;
  // As llama-bench: the same forward --reps times, each timed alone (the first also pages the weights in).
  torch::Tensor logits;
  std::vector<double> ms;
  for (int64_t r = 0; r < o.reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    logits = model->forward(ids_BT, opt).logits_BLV;
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  auto sorted = ms;
  std::sort(sorted.begin(), sorted.end());
  const double median_ms = sorted[sorted.size() / 2];
  const double tokens_per_s = median_ms > 0 ? 1e3 * static_cast<double>(ids_BT.numel()) / median_ms : 0.0;
  LOG_INFO("logits: forward " << median_ms << " ms" << (o.reps > 1 ? " (median of " + std::to_string(o.reps) + ", first " +
                                                                         std::to_string(ms.front()) + " ms)"
                                                                   : std::string())
                              << ", " << tokens_per_s << " tokens/s");
  const auto shape = logits.sizes().vec();
  if (!o.out.empty()) {
    logits = logits.to(torch::kFloat32).contiguous();
    io::save_safetensors(o.out, {{"logits", logits}, {"input_ids", ids_BT}},
                         {{"model", o.model_dir},
                          {"attention", o.attention},
                          {"block_length", std::to_string(opt.block_length)}});
  }
  if (!o.routing_out.empty()) write_routing(o.routing_out, model, o.model_dir);
  if (!o.json) {
    if (!o.out.empty()) std::cout << "wrote " << o.out << ": logits " << shape_str(shape) << " f32\n";
    else std::cout << "logits " << shape_str(shape) << ": forward " << median_ms << " ms, " << tokens_per_s << " tokens/s\n";
    return 0;
  }
  int64_t experts_used = 0;
  for (auto& blk : model->moe_blocks()) experts_used += blk->experts->num_touched();
  nlohmann::json j = {{"out", o.out.empty() ? nlohmann::json() : nlohmann::json(o.out)},
                      {"shape", shape},
                      {"dtype", dtype},
                      {"routing", moe::routing_policy_name(routing.policy)},
                      {"routing_source", o.routing.policy_source(cfg)},
                      {"forward_ms", median_ms},
                      {"forward_ms_all", ms},
                      {"tokens", ids_BT.numel()},
                      {"tokens_per_s", tokens_per_s},
                      {"weights", {{"mapped_bytes", load_stats.mapped_bytes},
                                   {"copied_bytes", load_stats.copied_bytes},
                                   {"touched_bytes", weight_bytes_touched(model, std::get<0>(at::_unique(ids_BT)).numel())},
                                   {"stacked_experts", load_stats.stacked_experts},
                                   {"quantized", load_stats.quantized},
                                   {"experts_used", experts_used},
                                   {"experts_total", cfg.num_experts * cfg.num_moe_layers()}}},
                      {"load_s", load_s},
                      {"peak_rss_bytes", prof::peak_rss_bytes()}};
  std::cout << j.dump(2) << "\n";
  return 0;
}

}  // namespace

void register_logits(CLI::App& app) {
  auto* sub = app.add_subcommand("logits", "Dump the f32 logits of one forward pass (--out), and time it");
  auto o = std::make_shared<LogitsOptions>();
  sub->add_option("-m,--model", o->model_dir, "Model directory")->required();
  auto* text_opt =
      sub->add_option("--text", o->text, "Text to tokenize with the model's tokenizer (B = 1)");
  auto* input_opt = sub->add_option(
      "--input", o->input,
      "IN.safetensors with input_ids (int64 [B, T]) and optionally mask_ratio (f32 [B], the EC "
      "capacity input; default #mask / T per row)");
  sub->add_option("--out", o->out, "OUT.safetensors: logits (f32 [B, T, V]) and input_ids (default: none, "
                                  "only the forward is timed)");
  sub->add_option("--routing-out", o->routing_out,
                  "OUT.safetensors: every MoE layer's routing of the (last) forward: layers.<i>.idx_TK / gate_TK "
                  "(token-major), token_EN / gate_EN (expert-major), coreset_BCE (block routing, u8)");
  sub->add_option("--reps", o->reps, "Time the forward this many times (median reported; the first also pages "
                                     "the weights in)")
      ->capture_default_str();
  sub->add_option("--attention", o->attention, "Attention mask")
      ->check(CLI::IsMember({"bidirectional", "block-causal"}))
      ->capture_default_str();
  o->routing.add_to(sub);
  sub->add_flag("--json", o->json, "Print a JSON report: forward_ms (median of --reps), tokens_per_s, load_s, dtype, "
                                   "routing and routing_source, weights mapped / copied / read, experts used, peak RSS");
  sub->add_option("--block-length", o->block_length,
                  "Block length of block-causal attention (blocks aligned to position 0)")
      ->capture_default_str();
  set_runner(sub, [o, sub, text_opt, input_opt]() {
    if (sub->count("--block-length") > 0 && o->attention != "block-causal")
      fail("", "--block-length", "only applies to --attention block-causal",
           "add --attention block-causal, or drop --block-length");
    return run_logits(*o, text_opt->count() > 0, input_opt->count() > 0);
  });
}

}  // namespace ecdlm::cli
