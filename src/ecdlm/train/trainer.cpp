#include "ecdlm/train/trainer.h"

#include <unistd.h>

#include <chrono>
#include <ctime>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "ecdlm/data/batcher.h"
#include "ecdlm/data/shards.h"
#include "ecdlm/model/checkpoint.h"
#include "ecdlm/model/checkpoint_check.h"
#include "ecdlm/moe/routing_stats.h"
#include "ecdlm/train/diffusion.h"
#include "ecdlm/train/metrics.h"
#include "ecdlm/train/retrofit.h"
#include "ecdlm/util/compat.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/fs.h"
#include "ecdlm/util/log.h"
#include "ecdlm/train/run_plots.h"
#include "ecdlm/util/progress.h"

namespace ecdlm {
namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

json TrainResult::to_json() const {
  return {{"steps", steps}, {"tokens", tokens}, {"seconds", seconds},
          {"train_seconds", train_seconds}, {"cpu_seconds", cpu_seconds}, {"tokens_per_s", tokens_per_s}, {"final_val_loss", final_val_loss},
          {"final_val_ppl", final_val_ppl}, {"diverged", diverged},
          {"last_checkpoint", last_checkpoint}, {"best_checkpoint", best_checkpoint}};
}

std::string latest_checkpoint(const std::string& out_dir) {
  fs::path dir = fs::path(out_dir) / "checkpoints";
  std::string best;
  if (!fs::is_directory(dir)) return best;
  for (const auto& e : fs::directory_iterator(dir)) {
    auto name = e.path().filename().string();
    if (name.rfind("step-", 0) != 0 || name.find('.') != std::string::npos) continue;
    if (!fs::exists(e.path() / "trainer_state.json")) continue;
    if (best.empty() || name > fs::path(best).filename().string()) best = e.path().string();
  }
  return best;
}

namespace {

// Whether `pid` is a live ecdlm process other than this one (its temp dirs are still being written).
bool other_ecdlm_alive(const std::string& pid) {
  if (pid == std::to_string(::getpid())) return true;
  std::ifstream comm("/proc/" + pid + "/comm");
  std::string name;
  return comm && std::getline(comm, name) && name == "ecdlm";
}

// A run killed while writing (SIGKILL, power loss) leaves save_model_dir's `X.tmp.PID` behind,
// and, if killed between its two renames, `X.old.PID` as the only copy of X. Only these names of
// ours are touched: a temp dir is removed, an orphaned `.old` is renamed back, a spare one removed.
void clean_stale_temps(const std::string& out_dir) {
  static const std::regex in_out(R"(^(best|train_config\.json)\.(tmp|old)\.(\d+)$)");
  static const std::regex in_ckpt(R"(^(step-\d+)\.(tmp|old)\.(\d+)$)");
  for (const auto& [dir, re] : {std::pair{fs::path(out_dir), &in_out},
                                std::pair{fs::path(out_dir) / "checkpoints", &in_ckpt}}) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) continue;
    std::vector<fs::path> found;
    for (const auto& e : fs::directory_iterator(dir, ec)) found.push_back(e.path());
    for (const auto& path : found) {
      std::smatch m;
      const std::string name = path.filename().string();
      if (!std::regex_match(name, m, *re)) continue;
      if (other_ecdlm_alive(m[3].str())) {
        LOG_WARN(path.string() << ": left as is, process " << m[3].str() << " (ecdlm) may still be writing it");
        continue;
      }
      const fs::path target = dir / m[1].str();
      if (m[2].str() == "old" && !fs::exists(target)) {
        fs::rename(path, target, ec);
        if (!ec) LOG_WARN("restored " << target.string() << " from " << name << " (a run was killed while replacing it)");
      } else {
        fs::remove_all(path, ec);
        if (!ec) LOG_WARN("removed stale temporary " << path.string() << " (a run was killed while writing it)");
      }
      if (ec) fail(path.string(), "", "cannot clean up a stale temporary: " + ec.message(), "remove it by hand");
    }
  }
}

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "step-%08lld", static_cast<long long>(step));
  return buf;
}

}  // namespace

std::unique_ptr<torch::optim::AdamW> make_optimizer(MoeDlm& model, const TrainParams& p) {
  std::vector<torch::Tensor> decay, no_decay;
  for (const auto& kv : model->named_parameters()) {
    if (!kv.value().requires_grad()) continue;
    (kv.value().dim() >= 2 ? decay : no_decay).push_back(kv.value());
  }
  auto opts = torch::optim::AdamWOptions(p.lr).betas({p.beta1, p.beta2}).eps(p.adam_eps);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(
                                 torch::optim::AdamWOptions(opts).weight_decay(p.weight_decay)));
  groups.emplace_back(no_decay, std::make_unique<torch::optim::AdamWOptions>(
                                    torch::optim::AdamWOptions(opts).weight_decay(0.0)));
  return std::make_unique<torch::optim::AdamW>(groups, opts);
}

MoeDlm load_distill_teacher(const std::string& dir, const ModelConfig& student) {
  if (!fs::exists(fs::path(dir) / "config.json"))
    fail(dir, "--train-distill-from", "not a model directory (no config.json)", "pass a checkpoint or best/ dir");
  const auto tc = ModelConfig::load(dir);
  // Everything that shapes the logits or what x_t means; router settings may differ.
  const auto tj = tc.to_json(), sj = student.to_json();
  for (const char* k : {"vocab_size", "mask_token_id", "hidden_size", "num_hidden_layers", "num_attention_heads",
                        "num_key_value_heads", "head_dim", "num_experts", "num_experts_per_tok"}) {
    const auto tv = tj.value(k, nlohmann::json()), sv = sj.value(k, nlohmann::json());
    if (tv != sv)
      fail((fs::path(dir) / "config.json").string(), k,
           "teacher " + tv.dump() + " differs from the student's " + sv.dump(),
           "distill from a model of the student's architecture and vocabulary");
  }
  auto teacher = load_model(dir);
  teacher->eval();
  for (auto& w : teacher->parameters()) w.set_requires_grad(false);
  return teacher;
}

StepOutput forward_backward(MoeDlm& model, const std::vector<torch::Tensor>& micro_x0, int64_t step,
                            const TrainParams& p, moe::RoutingSummary* routing, MoeDlm* teacher, DataParallel* dp) {
  const auto& cfg = model->config();
  StepOutput out;
  const double n = static_cast<double>(micro_x0.size());
  const auto routing_policy = p.routing();
  const bool track_loads = dp && cfg.moe_loss_free_bias_rate > 0;
  if (dp && dp->exchange) dp->exchange->take_stats();  // count this step's exchanges only
  for (size_t micro = 0; micro < micro_x0.size(); ++micro) {
    auto x0 = micro_x0[micro];
    auto nb = noise_batch(x0, cfg.mask_token_id, mix_seed(p.seed, static_cast<uint64_t>(step), micro),
                          p.mask_ratio_min, p.mask_ratio_max);
    if (dp) {
      // The noise of the whole global batch, then this rank's rows: as one process would draw it.
      x0 = x0.narrow(0, dp->first, dp->count);
      nb.x_t_BL = nb.x_t_BL.narrow(0, dp->first, dp->count);
      nb.masked_BL = nb.masked_BL.narrow(0, dp->first, dp->count);
      nb.r_B = nb.r_B.narrow(0, dp->first, dp->count);
    }
    ForwardOptions fo;
    fo.mask_ratio_B = nb.r_B;
    fo.skip_lm_head = true;
    if (routing_policy.policy != moe::RoutingPolicy::kToken) fo.routing = &routing_policy;
    torch::Tensor total;
    {
      compat::CpuAutocast ac(p.bf16);
      auto fwd = model->forward(nb.x_t_BL, fo);
      auto dl = diffusion_loss(model, fwd.hidden_BLD, x0, nb, p.inverse_r, p.loss_norm == "masked");
      total = dl.loss + fwd.aux_loss;
      if (teacher) {
        // Same x_t, same autocast as the student, the teacher's own token routing: with token
        // routing and equal weights the two logits match bit for bit (KL exactly 0).
        torch::Tensor teacher_MV;
        {
          torch::NoGradGuard no_grad;
          ForwardOptions tfo;
          tfo.mask_ratio_B = nb.r_B;
          tfo.skip_lm_head = true;
          auto tf = (*teacher)->forward(nb.x_t_BL, tfo);
          teacher_MV = masked_logits(*teacher, tf.hidden_BLD, dl.rows_M);
        }
        auto kl = distill_kl(teacher_MV, dl.logits_MV, p.distill_temperature);
        total = p.distill_weight * kl + (1.0 - p.distill_weight) * dl.loss + fwd.aux_loss;
        out.distill_kl += kl.item<double>() / n;
      }
      out.loss += dl.loss.item<double>() / n;
      out.aux_loss += fwd.aux_loss.item<double>() / n;
    }
    auto scaled = total / n;
    if (dp && micro + 1 == micro_x0.size()) {
      // Earlier micro-batches only accumulate locally (DDP's no_sync); this backward all-reduces.
      dp->reducer->arm();
      if (dp->expert_reducer) dp->expert_reducer->arm();
      scaled.backward();
      dp->reducer->finish();
      if (dp->expert_parallel()) finish_expert_grads(*dp);
    } else {
      scaled.backward();
    }
    if (routing) routing->add(model->last_routing_stats());
    if (track_loads) {
      auto blocks = model->moe_blocks();
      out.load_E.resize(blocks.size());
      for (size_t i = 0; i < blocks.size(); ++i) {
        const auto& l = blocks[i]->last_plan().load_E;
        if (l.defined()) out.load_E[i] = out.load_E[i].defined() ? out.load_E[i] + l : l.clone();
      }
    }
  }
  if (dp) {
    // The global means (equal-sized slices: the mean of the ranks' means).
    auto v = torch::tensor({out.loss, out.aux_loss, out.distill_kl}, torch::kFloat64);
    dp->group->all_reduce_sum(v);
    v /= static_cast<double>(dp->group->size());
    out.loss = v[0].item<double>();
    out.aux_loss = v[1].item<double>();
    out.distill_kl = v[2].item<double>();
  }
  if (p.grad_clip > 0)
    out.grad_norm = dp && dp->expert_parallel() ? clip_grad_norm_global(*dp, model, p.grad_clip)
                                                : torch::nn::utils::clip_grad_norm_(model->parameters(), p.grad_clip);
  if (dp && dp->exchange) {
    const auto st = dp->exchange->take_stats();
    out.alltoall_bytes = st.bytes_sent;
    out.alltoall_s = st.seconds;
  }
  return out;
}

namespace {

void set_lr(torch::optim::AdamW& opt, double lr) {
  for (auto& g : opt.param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
}

std::string serialize_optimizer(torch::optim::AdamW& opt) {
  torch::serialize::OutputArchive ar;
  opt.save(ar);
  std::ostringstream os;
  ar.save_to(os);
  return os.str();
}

void load_optimizer(torch::optim::AdamW& opt, const std::string& path) {
  torch::serialize::InputArchive ar;
  try {
    ar.load_from(path);
    opt.load(ar);
  } catch (const c10::Error& e) {
    fail(path, "", "cannot read optimizer state: " + e.msg(), "resume from an earlier checkpoint");
  }
}

// Applies the data set's vocabulary and special ids to the model config.
void apply_data_meta(ModelConfig& cfg, const std::string& data_dir) {
  auto meta_path = (fs::path(data_dir) / "meta.json").string();
  if (!fs::exists(meta_path))
    fail(data_dir, "meta.json", "not a prepared data directory",
         "run `ecdlm prepare-data --out " + data_dir + "` first");
  auto meta = read_json_file(meta_path);
  try {
    cfg.vocab_size = meta.at("vocab_size").get<int64_t>();
    cfg.mask_token_id = meta.at("mask_token_id").get<int64_t>();
    cfg.eos_token_id = meta.at("eos_token_id").get<int64_t>();
    cfg.pad_token_id = meta.at("pad_token_id").get<int64_t>();
  } catch (const json::exception& e) {
    fail(meta_path, "", std::string("missing field: ") + e.what(), "re-run ecdlm prepare-data");
  }
}

}  // namespace

TrainResult run_training(ModelConfig cfg, const TrainParams& p, bool resume, const DistOptions& dist_opt) {
  p.validate();
  apply_data_meta(cfg, p.data_dir);
  cfg.validate("model config");
  // Before the output dir is created: a model beyond this machine leaves nothing behind.
  check_model_fits_memory(cfg, "model config", 16.0, "training (f32 weights, gradients and two AdamW moments)");
  // Data parallel (torchrun environment): join and check every rank agrees before writing anything.
  auto dp = start_data_parallel(cfg, p, dist_opt);
  const bool rank0 = !dp || dp->is_rank0();
  if (!rank0) ProgressBar::set_enabled(false);
  if (rank0) {
    ensure_writable_dir(p.out_dir);
    clean_stale_temps(p.out_dir);
  }
  if (dp) dp->group->barrier();  // the others read checkpoints only after the clean-up
  auto train_shard = data::TokenShard::open(p.data_dir, "train");
  auto val_shard = data::TokenShard::open(p.data_dir, "val");
  if (train_shard.vocab_size() != cfg.vocab_size)
    fail(p.data_dir, "vocab_size", "shard vocabulary differs from meta.json", "re-run ecdlm prepare-data");
  data::BatchSampler sampler(train_shard, p.batch_size, p.seq_len, p.seed);
  data::EvalWindows val_windows(val_shard, p.seq_len, p.eval.max_windows);
  const int64_t final_windows = p.final_eval_windows > 0 ? p.final_eval_windows : p.eval.max_windows;
  // Validation routes as training does (a block-routing fine-tune is judged under block routing).
  EvalParams eval_params = p.eval;
  eval_params.routing = p.routing();
  if (dp) {
    // The windows' batches split over the data-parallel replicas; an EP group evaluates its share
    // together (its ranks run the same forwards, so the world's sum counts each part EP times).
    const auto& g = dp->group;
    const int64_t ep = std::max<int64_t>(1, dist_opt.ep);
    eval_params.parts = g->size() / ep;
    eval_params.part = g->rank() / ep;
    eval_params.all_reduce = [g, ep](std::vector<double>& v) {
      auto t = torch::tensor(v, torch::kFloat64);
      g->all_reduce_sum(t);
      t /= static_cast<double>(ep);
      for (size_t i = 0; i < v.size(); ++i) v[i] = t[static_cast<int64_t>(i)].item<double>();
    };
  }

  // Loaded before the seeded init, so the student starts exactly as without a teacher.
  MoeDlm teacher{nullptr};
  if (!p.distill_from.empty()) {
    teacher = load_distill_teacher(p.distill_from, cfg);
    LOG_INFO("distilling from " << p.distill_from << " (token routing, weight " << p.distill_weight
                                << ", temperature " << p.distill_temperature << ")");
  }
  torch::manual_seed(p.seed);
  MoeDlm model(cfg);
  if (!p.init_from.empty()) {
    auto st = io::SafetensorsSet::open(p.init_from);
    load_weights(model, st);
    LOG_INFO("initialized weights from " << p.init_from);
  }
  if (p.moe_routing != "token") p.routing().validate(moe_config_from(cfg));
  const int64_t n_trainable = set_trainable(model, p.trainable);
  if (p.trainable != "all") LOG_INFO("training " << p.trainable << " only: " << n_trainable << " parameters");
  auto opt = make_optimizer(model, p);

  int64_t start_step = 0, tokens = 0;
  // elapsed: wall-clock including evals and checkpoints; train_s: optimizer steps only, the
  // fair x axis when runs differ in how often they evaluate.
  // cpu_s: process CPU seconds of the optimizer steps divided by the intra-op threads, a time
  // axis that stays comparable when other work shares the machine.
  double elapsed_before = 0.0, train_s_before = 0.0, overhead_s = 0.0, cpu_s_before = 0.0, cpu_overhead_s = 0.0,
         best_val = std::numeric_limits<double>::infinity();
  std::string last_ckpt, best_ckpt = (fs::path(p.out_dir) / "best").string();
  if (resume) {
    last_ckpt = latest_checkpoint(p.out_dir);
    if (last_ckpt.empty())
      fail(p.out_dir, "--resume", "no checkpoint to resume from", "drop --resume to start fresh");
    const auto state_path = (fs::path(last_ckpt) / "trainer_state.json").string();
    auto state = read_json_file(state_path);
    auto st = io::SafetensorsSet::open(last_ckpt);
    load_weights(model, st);
    load_optimizer(*opt, (fs::path(last_ckpt) / "optimizer.pt").string());
    try {
      sampler.load_state(state.at("sampler"));
      start_step = state.at("step").get<int64_t>();
      tokens = state.at("tokens").get<int64_t>();
      elapsed_before = state.at("elapsed_s").get<double>();
      train_s_before = state.value("train_s", elapsed_before);
      cpu_s_before = state.value("cpu_s", train_s_before);
    } catch (const json::exception& e) {
      fail(state_path, "", std::string("corrupt trainer state: ") + e.what(),
           "resume from an earlier checkpoint (delete this one)");
    }
    if (state.contains("best_val_loss") && state["best_val_loss"].is_number())
      best_val = state["best_val_loss"].get<double>();
    LOG_INFO("resumed from " << last_ckpt << " at step " << start_step);
  }
  // Expert parallel: each rank keeps its shard of the full model it initialized or loaded.
  if (dp && dp->expert_parallel()) opt = shard_experts(*dp, model, *opt, p);
  if (dp) attach_reducer(*dp, model);
  // Rank 0 alone writes the run directory; the others keep a log that discards its lines.
  MetricsLog metrics(rank0 ? (fs::path(p.out_dir) / "metrics.jsonl").string() : std::string(), start_step);
  if (rank0)
    write_file_atomic((fs::path(p.out_dir) / "train_config.json").string(),
                      json({{"model", cfg.to_json()}, {"train", p.to_json()}}).dump(2) + "\n");

  LOG_INFO("model: " << to_string(cfg.router_type) << " router, " << cfg.num_hidden_layers
                     << " layers, hidden " << cfg.hidden_size << ", " << cfg.num_experts
                     << " experts (k=" << cfg.num_experts_per_tok << ", F=" << cfg.moe_intermediate_size
                     << ", shared " << cfg.shared_expert_intermediate_size << "), "
                     << model->num_parameters() / 1e6 << "M params, "
                     << model->num_active_parameters() / 1e6 << "M active");
  LOG_INFO("model config: " << cfg.to_json().dump());
  // Unbalanced token choice collapses: a 300-step Brown run sent ~16x the mean load to one expert.
  if (cfg.router_type == moe::RouterType::kTokenChoice && cfg.moe_aux_loss_coeff == 0.0 &&
      cfg.moe_loss_free_bias_rate == 0.0)
    LOG_WARN("token-choice router with no load balancing (moe_aux_loss_coeff 0, moe_loss_free_bias_rate 0): "
             "routers tend to collapse onto a few experts; pass --moe-aux-loss-coeff 0.01 or "
             "--moe-loss-free-bias-rate 0.001");
  LOG_INFO("train: " << p.to_json().dump());
  LOG_INFO("data: " << train_shard.size() << " train tokens, " << val_shard.size()
                    << " val tokens, " << val_windows.size() << " val windows of " << p.seq_len);

  // Expert parallel: the shards (and their moments) gathered into the single-process model on rank 0.
  auto full_copy = [&](bool with_optimizer) {
    return dp && dp->expert_parallel() ? gather_full(*dp, model, with_optimizer ? opt.get() : nullptr, p)
                                       : FullCopy{};
  };
  auto save = [&](int64_t step, const json& extra_state) {
    auto full = full_copy(true);
    if (!rank0) return;
    MoeDlm& save_model = full.model.is_empty() ? model : full.model;
    torch::optim::AdamW& save_opt = full.opt ? *full.opt : *opt;
    fs::path dir = fs::path(p.out_dir) / "checkpoints" / step_name(step);
    fs::create_directories(dir.parent_path());
    json state = {{"step", step}, {"tokens", tokens}, {"sampler", sampler.state()}};
    if (std::isfinite(best_val)) state["best_val_loss"] = best_val;
    state.update(extra_state);
    save_model_dir(save_model, dir.string(), p.data_dir,
                   {{"trainer_state.json", state.dump(2) + "\n"},
                    {"optimizer.pt", serialize_optimizer(save_opt)}});
    last_ckpt = dir.string();
    // Keep the newest keep_last checkpoints.
    std::vector<std::string> all;
    for (const auto& e : fs::directory_iterator(dir.parent_path())) {
      auto n = e.path().filename().string();
      if (n.rfind("step-", 0) == 0 && n.find('.') == std::string::npos) all.push_back(e.path().string());
    }
    std::sort(all.begin(), all.end());
    for (size_t i = 0; i + static_cast<size_t>(p.keep_last) < all.size(); ++i) fs::remove_all(all[i]);
  };

  const int64_t tokens_per_step = p.batch_size * p.seq_len * p.grad_accum;
  const double flops_per_token = 3.0 * model->forward_flops_per_token(p.seq_len);
  auto t_start = Clock::now();
  // Wall-clock decisions (time budget, LR progress) take rank 0's clock, so every rank agrees.
  auto elapsed = [&] {
    return agree(dp.get(), elapsed_before + std::chrono::duration<double>(Clock::now() - t_start).count());
  };
  const double threads = std::max(1, torch::get_num_threads());
  auto cpu_now = [] { return static_cast<double>(std::clock()) / CLOCKS_PER_SEC; };
  const double cpu_start = cpu_now();
  auto cpu_s = [&] { return cpu_s_before + (cpu_now() - cpu_start - cpu_overhead_s) / threads; };
  auto train_s = [&] {
    return train_s_before + std::chrono::duration<double>(Clock::now() - t_start).count() - overhead_s;
  };
  // el: elapsed() taken by the caller (distributed, each call is a broadcast from rank 0).
  auto progress_of = [&](int64_t step, double el) {
    double a = p.max_steps > 0 ? static_cast<double>(step) / static_cast<double>(p.max_steps) : 0.0;
    double b = p.time_budget_s > 0 ? el / p.time_budget_s : 0.0;
    return std::max(a, b);
  };
  ProgressBar bar("train", p.max_steps > 0 ? p.max_steps : 100, "tok");
  TrainResult res;
  model->train();
  moe::RoutingSummary routing;
  double loss_acc = 0.0, kl_acc = 0.0;
  int64_t loss_n = 0, step = start_step;
  auto window_start = Clock::now();
  int64_t window_tokens = 0;

  while (true) {
    if (p.max_steps > 0 && step >= p.max_steps) break;
    const double el_start = p.time_budget_s > 0 ? elapsed() : 0.0;
    if (p.time_budget_s > 0 && el_start >= p.time_budget_s) break;
    const double lr = p.lr_at(step, progress_of(step, el_start));
    set_lr(*opt, lr);
    opt->zero_grad();
    std::vector<torch::Tensor> micro;
    for (int64_t m = 0; m < p.grad_accum; ++m) micro.push_back(sampler.next());
    auto so = forward_backward(model, micro, step, p, &routing, teacher ? &teacher : nullptr, dp.get());
    const double step_loss = so.loss, step_aux = so.aux_loss, gnorm = so.grad_norm;
    if (!std::isfinite(step_loss) || !std::isfinite(so.distill_kl) || !std::isfinite(gnorm)) {
      bar.finish();
      LOG_WARN("training stopped: non-finite "
               << (!std::isfinite(step_loss) ? "loss" : !std::isfinite(so.distill_kl) ? "distillation KL" : "gradient norm")
               << " at step " << step << " (loss " << step_loss << ", grad-norm " << gnorm
               << "); the last good checkpoint is "
               << (last_ckpt.empty() ? std::string("(none saved yet)") : last_ckpt)
               << ". Lower --train-lr or raise --train-warmup.");
      metrics.write({{"step", step}, {"event", "diverged"}, {"loss", step_loss}, {"grad_norm", gnorm}});
      res.diverged = true;
      break;
    }
    opt->step();
    if (cfg.moe_loss_free_bias_rate > 0) {
      if (dp) update_expert_biases_global(*dp, model, so.load_E, cfg.moe_loss_free_bias_rate);
      else model->update_expert_biases(cfg.moe_loss_free_bias_rate);
    }
    ++step;
    tokens += tokens_per_step;
    window_tokens += tokens_per_step;
    loss_acc += step_loss;
    kl_acc += so.distill_kl;
    ++loss_n;
    std::ostringstream extra;
    extra << "loss " << std::fixed << std::setprecision(3) << step_loss;
    if (teacher) extra << " kl " << so.distill_kl;
    if (p.max_steps > 0)
      bar.update(step, extra.str(), static_cast<double>(tokens - start_step * tokens_per_step));
    else {
      bar.set_total(1000);
      bar.update(static_cast<int64_t>(1000 * progress_of(step, p.time_budget_s > 0 ? elapsed() : 0.0)), extra.str(),
                 static_cast<double>(tokens - start_step * tokens_per_step));
    }

    if (step % p.log_every == 0) {
      double dt = std::chrono::duration<double>(Clock::now() - window_start).count();
      double tps = dt > 0 ? window_tokens / dt : 0.0;
      json line = {{"step", step}, {"tokens", tokens}, {"elapsed_s", elapsed()}, {"train_s", train_s()},
                   {"cpu_s", cpu_s()}, {"loss", loss_acc / loss_n}, {"aux_loss", step_aux}, {"lr", lr},
                   {"grad_norm", gnorm}, {"tokens_per_s", tps},
                   {"model_flops_per_s", tps * flops_per_token},
                   {"routing", routing.averaged().to_json()}};
      if (dp) {
        // The last step's gradient all-reduce: payload, time backward had to wait for it at the end.
        const auto& rs = dp->reducer->last_stats();
        line["dist"] = {{"world_size", dp->group->size()}, {"allreduce_bytes", rs.bytes},
                        {"allreduce_wait_s", rs.wait_s}, {"buckets", rs.buckets},
                        {"buckets_overlapped", rs.overlapped}};
        if (dp->expert_parallel()) {
          // The last step's token exchanges (forward and backward, every MoE layer and micro-batch).
          line["dist"]["expert_parallel"] = dp->ep;
          line["dist"]["alltoall_bytes"] = so.alltoall_bytes;
          line["dist"]["alltoall_wait_s"] = so.alltoall_s;
        }
      }
      if (teacher) line["distill_kl"] = kl_acc / loss_n;
      metrics.write(line);
      routing = moe::RoutingSummary();
      loss_acc = 0.0;
      kl_acc = 0.0;
      loss_n = 0;
      window_start = Clock::now();
      window_tokens = 0;
    }
    const bool halt = p.halt_at_step > 0 && step >= p.halt_at_step;
    const bool last = (p.max_steps > 0 && step >= p.max_steps) ||
                      (p.time_budget_s > 0 && elapsed() >= p.time_budget_s);
    const auto t_overhead = Clock::now();
    const double cpu_overhead_start = cpu_now();
    const double train_s_now = train_s(), cpu_s_now = cpu_s();
    if ((p.eval_every > 0 && step % p.eval_every == 0) || last) {
      auto ev = evaluate_elbo(model, val_windows, eval_params);
      json line = {{"step", step}, {"tokens", tokens}, {"elapsed_s", elapsed()}, {"train_s", train_s_now},
                   {"cpu_s", cpu_s_now}};
      auto evj = ev.to_json();
      line["val_loss"] = ev.loss;
      line["val_ppl"] = ev.ppl;
      line["val_per_bin"] = evj["per_bin"];
      line["val_routing"] = evj["routing"];
      metrics.write(line);
      res.final_val_loss = ev.loss;
      res.final_val_ppl = ev.ppl;
      // Every rank must take the same decision (expert parallel: all join the gather).
      if (agree(dp && dp->expert_parallel() ? dp.get() : nullptr, ev.loss) < best_val) {
        best_val = ev.loss;
        auto full = full_copy(false);
        if (rank0) save_model_dir(full.model.is_empty() ? model : full.model, best_ckpt, p.data_dir,
                       {{"best.json", json({{"step", step}, {"val_loss", ev.loss}}).dump() + "\n"}});
        res.best_checkpoint = best_ckpt;
      }
      window_start = Clock::now();  // eval time is not training throughput
      window_tokens = 0;
    }
    if ((p.save_every > 0 && step % p.save_every == 0) || last || halt)
      save(step, {{"elapsed_s", elapsed()}, {"train_s", train_s_now}, {"cpu_s", cpu_s_now}});
    overhead_s += std::chrono::duration<double>(Clock::now() - t_overhead).count();
    cpu_overhead_s += cpu_now() - cpu_overhead_start;
    if (halt) break;
  }
  if (!res.diverged) bar.finish();
  res.steps = step;
  res.tokens = tokens;
  res.seconds = elapsed();
  res.train_seconds = train_s();
  res.cpu_seconds = cpu_s();
  // Throughput of the optimizer steps alone (evals and checkpoints excluded).
  res.tokens_per_s = res.train_seconds - train_s_before > 0
                         ? static_cast<double>(tokens - start_step * tokens_per_step) /
                               (res.train_seconds - train_s_before)
                         : 0.0;
  res.last_checkpoint = last_ckpt;
  if (fs::exists(best_ckpt)) res.best_checkpoint = best_ckpt;
  if (rank0)
    for (const auto& f : plot_run(p.out_dir)) LOG_INFO("plot: " << f);
  if (final_windows != p.eval.max_windows && !res.diverged) {
    data::EvalWindows final_val(val_shard, p.seq_len, final_windows);
    auto ev = evaluate_elbo(model, final_val, eval_params);
    res.final_val_loss = ev.loss;
    res.final_val_ppl = ev.ppl;
  }
  if (dp) dp->group->barrier();  // rank 0 hosts the store: nobody leaves while another still needs it
  return res;
}

}  // namespace ecdlm
