#include "ecdlm/train/data_parallel.h"

#include <filesystem>
#include <functional>
#include <sstream>

#include "ecdlm/data/shards.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/fs.h"
#include "ecdlm/util/log.h"

namespace ecdlm {
namespace fs = std::filesystem;

namespace {

std::string digest(const std::string& s) {
  std::ostringstream os;
  os << std::hex << std::hash<std::string>{}(s);
  return os.str();
}

}  // namespace

std::unique_ptr<DataParallel> start_data_parallel(const ModelConfig& cfg, const TrainParams& p,
                                                  const DistOptions& opt) {
  const auto env = dist::DistEnv::from_environment();
  if (!env.distributed()) return nullptr;
  auto dp = std::make_unique<DataParallel>();
  dp->group = dist::ProcessGroup::join(env, opt.timeout_s);
  auto& g = *dp->group;
  // Mismatches fail on every rank at once, before anything is written.
  g.check_same("model config", "hash " + digest(cfg.to_json().dump()),
               "start every rank with the same --config and --moe-* flags");
  g.check_same("--train-seed", std::to_string(p.seed), "start every rank with the same --train-seed");
  // The data must be the same shards; the path may differ between machines.
  auto tr = data::TokenShard::open(p.data_dir, "train");
  auto va = data::TokenShard::open(p.data_dir, "val");
  g.check_same("--data", std::to_string(tr.size()) + " train / " + std::to_string(va.size()) +
                             " val tokens, meta.json hash " +
                             digest(read_text_file((fs::path(p.data_dir) / "meta.json").string())),
               "give every rank the same prepared data directory (--data)");
  auto tj = p.to_json();
  tj.erase("data_dir");
  g.check_same("train config", "hash " + digest(tj.dump()),
               "start every rank with the same --config and --train-* flags");
  if (p.batch_size % g.size() != 0)
    fail("", "--train-batch-size",
         "the global batch " + std::to_string(p.batch_size) + " does not divide by WORLD_SIZE " +
             std::to_string(g.size()),
         "use a multiple of " + std::to_string(g.size()) + " (each rank trains batch / WORLD_SIZE rows)");
  dp->count = p.batch_size / g.size();
  dp->first = g.rank() * dp->count;
  LOG_INFO("dist: data parallel, rank " << g.rank() << " trains rows [" << dp->first << ", "
                                        << dp->first + dp->count << ") of each global batch of " << p.batch_size);
  return dp;
}

void attach_reducer(DataParallel& dp, MoeDlm& model) {
  std::vector<torch::Tensor> all, trainable;
  for (auto& t : model->parameters()) all.push_back(t);
  for (auto& t : model->buffers()) all.push_back(t);
  dist::broadcast_from_rank0(*dp.group, all);
  for (auto& t : model->parameters())
    if (t.requires_grad()) trainable.push_back(t);
  dp.reducer = std::make_unique<dist::GradReducer>(*dp.group, trainable);
}

void update_expert_biases_global(DataParallel& dp, MoeDlm& model, std::vector<torch::Tensor> loads, double rate) {
  auto blocks = model->moe_blocks();
  std::vector<torch::Tensor> defined;
  for (auto& l : loads)
    if (l.defined()) defined.push_back(l);
  dp.group->all_reduce_sum(defined);
  torch::NoGradGuard ng;
  for (size_t i = 0; i < blocks.size() && i < loads.size(); ++i) {
    auto bias = blocks[i]->gate->expert_bias;
    if (loads[i].defined() && bias.defined()) {
      auto load = loads[i].to(torch::kFloat32);
      bias.add_(rate * torch::sign(load.mean() - load));
    }
    blocks[i]->update_expert_bias(0.0);  // drops the local accumulator, changes nothing else
  }
}

double agree(DataParallel* dp, double v) {
  if (!dp) return v;
  auto t = torch::tensor({v}, torch::kFloat64);
  dp->group->broadcast(t, 0);
  return t.item<double>();
}

}  // namespace ecdlm
