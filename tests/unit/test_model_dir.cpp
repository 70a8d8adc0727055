// What a model directory holds (model_dir.h): stored dtype, conversion sizes, the file's expert
// layout, tokenizer files, and the mask / eos ids the decoders use with their sources.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "../test_util.h"
#include "ecdlm/model/model_dir.h"
#include "ecdlm/util/error.h"

using namespace ecdlm;
namespace fs = std::filesystem;

namespace {

// The golden tiny checkpoint (config.json has no mask_token_id) with extra files beside it.
std::string tiny_copy(const std::string& tag) {
  const auto dir = test::temp_dir(tag);
  for (const char* f : {"config.json", "model.safetensors"})
    fs::copy_file(test::golden_dir("tiny") + "/" + f, dir + "/" + f);
  return dir;
}

void write(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

}  // namespace

TEST(ModelDir, StoredDtypeConversionAndLayout) {
  if (!test::has_golden("tiny")) GTEST_SKIP() << "no golden fixtures";
  const auto st = io::SafetensorsSet::open(test::golden_dir("tiny"));
  EXPECT_EQ(stored_weight_dtype(st), "F32");
  EXPECT_TRUE(conversion_bytes(st, torch::kFloat32).empty());
  const auto bf16 = conversion_bytes(st, torch::kBFloat16);
  ASSERT_EQ(bf16.size(), 1u);
  EXPECT_EQ(bf16.at("F32"), static_cast<int64_t>(st.total_bytes()));
  EXPECT_EQ(expert_file_layout(st), "per-expert");  // mlp.experts.E.*_proj.weight, not stacked
}

TEST(ModelDir, MaskIdFromGenerationConfigThenTokenizer) {
  if (!test::has_golden("tiny")) GTEST_SKIP() << "no golden fixtures";
  const auto dir = tiny_copy("model_dir_mask");
  const auto cfg = ModelConfig::load(dir);
  ASSERT_LT(cfg.mask_token_id, 0);
  EXPECT_EQ(resolve_mask_id(dir, cfg).id, -1);  // no config key, no generation_config.json, no tokenizer
  EXPECT_TRUE(tokenizer_files(dir).empty());
  write(dir + "/generation_config.json", R"({"eos_token_id": 298, "mask_token_id": 299})");
  const auto m = resolve_mask_id(dir, cfg);
  EXPECT_EQ(m.id, 299);
  EXPECT_EQ(m.source, "generation_config.json mask_token_id");
  const auto eos = resolve_eos_id(dir, cfg);
  EXPECT_EQ(eos.id, 298);
  EXPECT_EQ(eos.source, "config.json pad_token_id");  // LLaDA2: eos falls back to pad
  write(dir + "/generation_config.json", R"({"mask_token_id": 300})");
  try {
    resolve_mask_id(dir, cfg);
    FAIL() << "an id outside the vocabulary was accepted";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("generation_config.json"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("mask_token_id"), std::string::npos) << e.what();
  }
}
