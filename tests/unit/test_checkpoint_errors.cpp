// load_weights on checkpoints that disagree with the model: every case is a UserError naming
// the file and the tensor or field, never a silent conversion or a confusing shape error.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "ecdlm/model/checkpoint.h"
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

}  // namespace
