// load_weights on checkpoints that disagree with the model: every case is a UserError naming
// the file and the tensor or field, never a silent conversion or a confusing shape error.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <map>

#include "ecdlm/model/checkpoint.h"
#include "ecdlm/model/checkpoint_check.h"
#include "ecdlm/util/error.h"
#include "../test_models.h"

namespace fs = std::filesystem;
using ecdlm::MoeDlm;
using ecdlm::ModelConfig;
using ecdlm::UserError;
using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

namespace {

class CheckpointErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    file_ = (fs::temp_directory_path() /
             ("ecdlm_ckpt_" + std::to_string(::getpid()) + "_" +
              ::testing::UnitTest::GetInstance()->current_test_info()->name() + ".safetensors"))
                .string();
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove(file_, ec);
  }
  // Saves `tensors`, loads them into a fresh model of `cfg`; returns the error text ("" if none).
  std::string load_error(const ModelConfig& cfg, const NamedTensors& tensors) {
    ecdlm::io::save_safetensors(file_, tensors);
    MoeDlm model(cfg);
    try {
      ecdlm::load_weights(model, ecdlm::io::SafetensorsSet::open(file_));
    } catch (const UserError& e) {
      return e.what();
    }
    return "";
  }
  static NamedTensors exported(const ModelConfig& cfg) {
    torch::manual_seed(0);
    MoeDlm model(cfg);
    return ecdlm::export_tensors(model);
  }
  std::string file_;
};

void expect_has(const std::string& msg, const std::vector<std::string>& parts) {
  EXPECT_FALSE(msg.empty()) << "expected an error";
  for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << p << " not in: " << msg;
}

TEST_F(CheckpointErrors, ExportedWeightsLoadBack) {
  const ModelConfig cfg = ecdlm::test::small_tc_config();
  EXPECT_EQ(load_error(cfg, exported(cfg)), "");
}

TEST_F(CheckpointErrors, ExpertCountDisagreeingWithConfigNamesLayerAndBothCounts) {
  const ModelConfig with8 = ecdlm::test::small_tc_config();
  ModelConfig with4 = with8;
  with4.num_experts = 4;
  with4.validate("test");
  // Checkpoint with more experts than the config: the extra experts must not go unused silently.
  expect_has(load_error(with4, exported(with8)),
             {file_, "model.layers.0.mlp.gate.weight", "8 experts", "num_experts is 4", "config.json"});
  // Fewer: reported as a count mismatch, not as a missing expert tensor or router shape.
  expect_has(load_error(with8, exported(with4)),
             {file_, "model.layers.0.mlp.gate.weight", "4 experts", "num_experts is 8"});
}

TEST_F(CheckpointErrors, IntegerWeightIsRejectedNotConverted) {
  const ModelConfig cfg = ecdlm::test::small_tc_config();
  NamedTensors tensors = exported(cfg);
  std::string name;
  for (auto& [n, t] : tensors) {
    if (n.find("attention.dense.weight") != std::string::npos) {
      t = (t * 100).round().to(torch::kChar);
      name = n;
      break;
    }
  }
  ASSERT_FALSE(name.empty());
  expect_has(load_error(cfg, tensors), {file_, name, "I8", "not supported"});
}

TEST_F(CheckpointErrors, WrongShapeNamesTensorAndBothShapes) {
  const ModelConfig cfg = ecdlm::test::small_tc_config();
  NamedTensors tensors = exported(cfg);
  ASSERT_EQ(tensors.back().second.dim(), 2);
  const std::string name = tensors.back().first;
  const auto shape = tensors.back().second.sizes().vec();
  tensors.back().second = tensors.back().second.reshape({shape[1], shape[0]});
  expect_has(load_error(cfg, tensors), {file_, name, "but expected"});
}

// expected_tensors mirrors the module tree: equal to MoeDlm(cfg)'s parameters and buffers (names
// and shapes) for dense layers, no shared expert, no QK norm, expert bias, GQA.
TEST(CheckpointHeaderShapes, ExpectedTensorsEqualTheModelsOwn) {
  std::vector<ModelConfig> cfgs;
  cfgs.push_back(ecdlm::test::small_tc_config());
  cfgs.push_back(ecdlm::test::small_tc_config(40, 0));
  ModelConfig c = ecdlm::test::small_tc_config();
  c.first_k_dense_replace = 1;
  c.intermediate_size = 24;
  c.use_qk_norm = false;
  c.moe_router_enable_expert_bias = true;
  c.num_key_value_heads = 2;
  c.validate("test");
  cfgs.push_back(c);
  c.moe_router_enable_expert_bias = false;
  c.moe_loss_free_bias_rate = 0.01;
  cfgs.push_back(c);
  for (const auto& cfg : cfgs) {
    MoeDlm model(cfg);
    std::map<std::string, std::vector<int64_t>> want, got;
    for (const auto& p : model->named_parameters()) want[p.key()] = p.value().sizes().vec();
    for (const auto& b : model->named_buffers()) want[b.key()] = b.value().sizes().vec();
    double numel = 0;
    for (const auto& t : ecdlm::expected_tensors(cfg)) {
      EXPECT_EQ(t.keys.size(), t.shape.size()) << t.name;
      got[t.name] = t.shape;
      double n = 1;
      for (auto d : t.shape) n *= static_cast<double>(d);
      numel += n;
    }
    EXPECT_EQ(got, want);
    EXPECT_EQ(ecdlm::expected_parameters(cfg), numel);
  }
}

class CheckpointHeader : public CheckpointErrors {
 protected:
  // Checks `cfg` against the header of a file holding `tensors`; the error text ("" if none).
  std::string check_error(const ModelConfig& cfg, const NamedTensors& tensors) {
    ecdlm::io::save_safetensors(file_, tensors);
    try {
      ecdlm::check_checkpoint_header(cfg, ecdlm::io::SafetensorsSet::open(file_), "cfg/config.json");
    } catch (const UserError& e) {
      return e.what();
    }
    return "";
  }
};

TEST_F(CheckpointHeader, MatchingConfigPassesInEveryLayout) {
  ModelConfig cfg = ecdlm::test::small_tc_config();
  EXPECT_EQ(check_error(cfg, exported(cfg)), "");
  // Stacked experts, as `ecdlm convert --layout stacked` writes them.
  MoeDlm model(cfg);
  NamedTensors stacked;
  for (const auto& p : model->named_parameters()) stacked.emplace_back(p.key(), p.value().detach());
  EXPECT_EQ(check_error(cfg, stacked), "");
  cfg.arch = ecdlm::Arch::kLladaMoe;  // q/k/v split, LLaDA-MoE names
  EXPECT_EQ(check_error(cfg, exported(cfg)), "");
}

TEST_F(CheckpointHeader, HugeExpertCountNamesKeyTensorAndBothShapesWithoutAllocating) {
  const ModelConfig cfg = ecdlm::test::small_tc_config();
  ModelConfig huge = cfg;
  huge.num_experts = 1000000000;  // MoeDlm(huge) would need terabytes
  expect_has(check_error(huge, exported(cfg)),
             {"cfg/config.json: num_experts = 1000000000 disagrees with " + file_,
              "tensor 'model.layers.0.mlp.gate.weight' has shape [8, 32], the config implies [1000000000, 32]",
              "fix:"});
}

TEST_F(CheckpointHeader, EachKeyIsNamed) {
  const ModelConfig cfg = ecdlm::test::small_tc_config();
  auto with = [&](auto edit) {
    ModelConfig c = cfg;
    edit(c);
    return check_error(c, exported(cfg));
  };
  expect_has(with([](ModelConfig& c) { c.vocab_size = 1000; }),
             {"vocab_size = 1000 disagrees", "model.word_embeddings.weight", "[48, 32]", "[1000, 32]"});
  expect_has(with([](ModelConfig& c) { c.moe_intermediate_size = 7; }),
             {"moe_intermediate_size = 7 disagrees", "mlp.experts.0.gate_proj.weight", "[16, 32]", "[7, 32]"});
  expect_has(with([](ModelConfig& c) { c.num_key_value_heads = 2; }),
             {"num_attention_heads = 4, num_key_value_heads = 2, head_dim = 8 disagree",
              "attention.query_key_value.weight", "[96, 32]", "[64, 32]"});
  expect_has(with([](ModelConfig& c) { c.num_hidden_layers = 1000000000; }),
             {"num_hidden_layers = 1000000000 disagrees with", "tensor 'model.layers.2.input_layernorm.weight' is missing"});
  expect_has(with([](ModelConfig& c) { c.shared_expert_intermediate_size = 64; }),
             {"num_shared_experts * moe_intermediate_size = 64 disagrees", "shared_experts.gate_proj.weight"});
  // Fewer experts in the config than the file: the router names it before any expert tensor.
  expect_has(with([](ModelConfig& c) { c.num_experts = 4; }),
             {"num_experts = 4 disagrees", "mlp.gate.weight", "[8, 32]", "[4, 32]"});
}

TEST_F(CheckpointHeader, UnsupportedDtypeIsNamed) {
  const ModelConfig cfg = ecdlm::test::small_tc_config();
  NamedTensors tensors = exported(cfg);
  tensors.front().second = tensors.front().second.to(torch::kInt32);
  expect_has(check_error(cfg, tensors), {tensors.front().first, "I32", "not supported"});
}

}  // namespace
