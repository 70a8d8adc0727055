#include "ecdlm/io/safetensors.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include "ecdlm/util/error.h"

namespace fs = std::filesystem;
using ecdlm::UserError;
using ecdlm::io::DType;
using ecdlm::io::SafetensorsFile;
using ecdlm::io::SafetensorsSet;
using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

namespace {

class Safetensors : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / ("ecdlm_st_" + std::to_string(::getpid()) + "_" +
                                        std::to_string(counter++) + "_" + info->name());
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // Raw safetensors bytes: u64 LE header length, header (space-padded to `pad_to`), data.
  static std::string build(std::string header, const std::string& data, size_t pad_to = 8) {
    if (pad_to > 1) header.append((pad_to - header.size() % pad_to) % pad_to, ' ');
    std::string out(8, '\0');
    for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(uint64_t(header.size()) >> (8 * i));
    return out + header + data;
  }
  std::string write_bytes(const std::string& name, const std::string& bytes) const {
    std::ofstream(path(name), std::ios::binary).write(bytes.data(), bytes.size());
    return path(name);
  }
  std::string write_st(const std::string& name, const std::string& header,
                       const std::string& data) const {
    return write_bytes(name, build(header, data));
  }
  static std::string read_bytes(const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  fs::path dir_;
};

// Runs fn, requires a UserError whose message names `file` and contains `keyword`.
void expect_user_error(const std::function<void()>& fn, const std::string& file,
                       const std::string& keyword) {
  try {
    fn();
  } catch (const UserError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(file), std::string::npos) << "message lacks file: " << msg;
    EXPECT_NE(msg.find(keyword), std::string::npos) << "message lacks '" << keyword << "': " << msg;
    EXPECT_NE(msg.find("fix:"), std::string::npos) << "message lacks a fix: " << msg;
    return;
  }
  ADD_FAILURE() << "expected UserError containing '" << keyword << "'";
}

void expect_open_fails(const std::string& file, const std::string& keyword) {
  expect_user_error([&] { SafetensorsFile::open(file); }, file, keyword);
}

template <typename T>
std::string le_bytes(std::initializer_list<T> values) {
  std::string s;
  for (T v : values) s.append(reinterpret_cast<const char*>(&v), sizeof(T));
  return s;
}

}  // namespace

TEST_F(Safetensors, RoundTripAllDtypesScalarsEmptyAndMetadata) {
  torch::manual_seed(0);
  NamedTensors in = {
      {"w_f32_2x3", torch::randn({2, 3})},
      {"w_bf16_4", torch::randn({4}).to(torch::kBFloat16)},
      {"w_f16_3x2", torch::randn({3, 2}).to(torch::kHalf)},
      {"ids_i64_5", torch::arange(-2, 3, torch::kLong)},
      {"scalar_f32", torch::tensor(3.25f).reshape({})},
      {"empty_f32_0x4", torch::empty({0, 4})},
      {"i32_2", torch::tensor({-7, 9}, torch::kInt)},
      {"u8_3", torch::tensor({0, 128, 255}, torch::kByte)},
      {"bool_3", torch::tensor({true, false, true})},
      {"f64_2", torch::tensor({1e-300, -2.5}, torch::kDouble)},
      {"i16_2", torch::tensor({-300, 300}, torch::kShort)},
      {"i8_2", torch::tensor({-128, 127}, torch::kChar)},
      {"scalar_i64", torch::tensor(int64_t{1} << 40).reshape({})},
  };
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "héllo \"q\""}};
  const std::string p = path("rt.safetensors");
  ecdlm::io::save_safetensors(p, in, meta);
  EXPECT_FALSE(fs::exists(p + ".tmp." + std::to_string(::getpid())));

  auto f = SafetensorsFile::open(p);
  EXPECT_EQ(f->path(), p);
  EXPECT_EQ(f->metadata(), meta);
  ASSERT_EQ(f->tensors().size(), in.size());
  for (const auto& [name, t] : in) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(f->has(name));
    torch::Tensor got = f->get(name, t.sizes().vec());
    EXPECT_EQ(got.scalar_type(), t.scalar_type());
    EXPECT_EQ(got.sizes(), t.sizes());
    EXPECT_TRUE(torch::equal(got, t));
  }
  EXPECT_EQ(f->get("scalar_f32").dim(), 0);
  EXPECT_EQ(f->get("scalar_f32").item<float>(), 3.25f);
  EXPECT_EQ(f->find("w_bf16_4")->dtype, DType::BF16);
  EXPECT_EQ(f->find("w_f16_3x2")->dtype, DType::F16);
  EXPECT_EQ(f->find("missing"), nullptr);
  // Packing follows insertion order, and tensors() is sorted by offset.
  EXPECT_EQ(f->find("w_f32_2x3")->begin, 0u);
  EXPECT_EQ(f->find("w_bf16_4")->begin, 24u);
  for (size_t i = 1; i < f->tensors().size(); ++i)
    EXPECT_LE(f->tensors()[i - 1].begin, f->tensors()[i].begin);
}

TEST_F(Safetensors, NonContiguousInputIsWrittenContiguously) {
  torch::Tensor base_4x3 = torch::arange(12, torch::kFloat).reshape({4, 3});
  torch::Tensor t_3x4 = base_4x3.t();
  torch::Tensor slice_2 = base_4x3.select(1, 1).slice(0, 1, 3);  // storage offset != 0
  const std::string p = path("nc.safetensors");
  ecdlm::io::save_safetensors(p, {{"t", t_3x4}, {"s", slice_2}});
  auto f = SafetensorsFile::open(p);
  EXPECT_TRUE(torch::equal(f->get("t", {3, 4}), t_3x4));
  EXPECT_TRUE(torch::equal(f->get("s", {2}), slice_2));
}

TEST_F(Safetensors, GetIsZeroCopyAndKeepsMappingAlive) {
  torch::Tensor w_64x16 = torch::randn({64, 16});
  const std::string p = path("zc.safetensors");
  ecdlm::io::save_safetensors(p, {{"bias", torch::randn({3})}, {"w", w_64x16}});
  auto f = SafetensorsFile::open(p);
  const ecdlm::io::TensorInfo* info = f->find("w");
  ASSERT_NE(info, nullptr);
  torch::Tensor got = f->get("w");
  EXPECT_EQ(static_cast<const void*>(got.data_ptr()), static_cast<const void*>(f->data(*info)));
  EXPECT_EQ(std::memcmp(f->data(*info), w_64x16.data_ptr(), info->nbytes()), 0);
  // The deleter holds a reference: dropping ours must not unmap the bytes under the tensor.
  std::weak_ptr<SafetensorsFile> weak = f;
  f.reset();
  EXPECT_FALSE(weak.expired());
  EXPECT_TRUE(torch::equal(got, w_64x16));
  got = torch::Tensor();
  EXPECT_TRUE(weak.expired());
}

TEST_F(Safetensors, WriterProducesExactBytes) {
  const std::string p = path("exact.safetensors");
  ecdlm::io::save_safetensors(p, {{"b", torch::tensor(int64_t{7}).reshape({})},
                                  {"a", torch::tensor({1.0f, 2.0f})}},
                              {{"k", "v"}});
  const std::string header =
      R"({"__metadata__":{"k":"v"},"a":{"data_offsets":[8,16],"dtype":"F32","shape":[2]},)"
      R"("b":{"data_offsets":[0,8],"dtype":"I64","shape":[]}})";
  const std::string expected = build(header, le_bytes<int64_t>({7}) + le_bytes<float>({1.f, 2.f}));
  const std::string actual = read_bytes(p);
  EXPECT_EQ(actual.size() % 8, 0u);
  EXPECT_EQ(actual, expected);
}

TEST_F(Safetensors, ReadsHandBuiltKnownFile) {
  const std::string header =
      R"({"__metadata__":{"format":"pt"},)"
      R"("f32":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("i64":{"dtype":"I64","shape":[],"data_offsets":[8,16]},)"
      R"("bf16":{"dtype":"BF16","shape":[2],"data_offsets":[16,20]},)"
      R"("f16":{"dtype":"F16","shape":[1,1],"data_offsets":[20,22]},)"
      R"("flags":{"dtype":"BOOL","shape":[3],"data_offsets":[22,25]},)"
      R"("none":{"dtype":"F32","shape":[0],"data_offsets":[25,25]}})";
  const std::string data = le_bytes<float>({1.5f, -2.0f}) + le_bytes<int64_t>({42}) +
                           le_bytes<uint16_t>({0x3F80, 0xC000}) + le_bytes<uint16_t>({0x3C00}) +
                           std::string("\x01\x00\x01", 3);
  const std::string p = write_st("known.safetensors", header, data);
  auto f = SafetensorsFile::open(p);
  EXPECT_EQ(f->metadata().at("format"), "pt");
  ASSERT_EQ(f->tensors().size(), 6u);
  EXPECT_EQ(f->tensors().front().name, "f32");
  EXPECT_EQ(f->get("f32")[0].item<float>(), 1.5f);
  EXPECT_EQ(f->get("f32")[1].item<float>(), -2.0f);
  EXPECT_EQ(f->get("i64").item<int64_t>(), 42);
  torch::Tensor bf = f->get("bf16");
  EXPECT_EQ(bf.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(bf[0].item<float>(), 1.0f);
  EXPECT_EQ(bf[1].item<float>(), -2.0f);
  torch::Tensor h = f->get("f16", {1, 1});
  EXPECT_EQ(h.scalar_type(), torch::kHalf);
  EXPECT_EQ(h.item<float>(), 1.0f);
  EXPECT_TRUE(torch::equal(f->get("flags"), torch::tensor({true, false, true})));
  EXPECT_EQ(f->get("none").numel(), 0);

  // Same bytes behind an unpadded header: F32 data lands misaligned and must still read right.
  const std::string unpadded = build(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                                     le_bytes<float>({0.5f, 4.0f}), /*pad_to=*/1);
  auto g = SafetensorsFile::open(write_bytes("unpadded.safetensors", unpadded));
  EXPECT_TRUE(torch::equal(g->get("x"), torch::tensor({0.5f, 4.0f})));
}

TEST_F(Safetensors, ZeroLengthDataSectionAndEmptyFiles) {
  const std::string p0 = path("none.safetensors");
  ecdlm::io::save_safetensors(p0, {});
  auto f0 = SafetensorsFile::open(p0);
  EXPECT_TRUE(f0->tensors().empty());
  EXPECT_EQ(f0->data_size(), 0u);

  const std::string p1 = path("empties.safetensors");
  ecdlm::io::save_safetensors(p1, {{"e", torch::empty({0})}, {"e2", torch::empty({3, 0}, torch::kHalf)}});
  auto f1 = SafetensorsFile::open(p1);
  EXPECT_EQ(f1->data_size(), 0u);
  EXPECT_EQ(f1->get("e2", {3, 0}).scalar_type(), torch::kHalf);
  EXPECT_EQ(SafetensorsSet::open(p1).total_bytes(), 0u);
}

TEST_F(Safetensors, GapsAreAcceptedWithWarning) {
  const std::string p = write_st("gap.safetensors",
                                 R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                 R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                                 le_bytes<float>({1.f, 99.f, 2.f, 98.f}));
  auto f = SafetensorsFile::open(p);
  EXPECT_EQ(f->get("b").item<float>(), 2.f);
}

TEST_F(Safetensors, ShardedRoundTrip) {
  NamedTensors in;
  for (int i = 0; i < 5; ++i) in.push_back({"layer" + std::to_string(i) + ".w", torch::randn({10, 10})});
  const std::string d = path("ckpt");
  ecdlm::io::save_safetensors_sharded(d, in, /*max_shard_bytes=*/1000, {{"format", "pt"}});
  EXPECT_FALSE(fs::exists(d + "/model.safetensors"));
  ASSERT_TRUE(fs::exists(d + "/model.safetensors.index.json"));
  for (int i = 1; i <= 3; ++i)
    EXPECT_TRUE(fs::exists(d + "/model-0000" + std::to_string(i) + "-of-00003.safetensors"));

  for (const std::string& src : {d, d + "/model.safetensors.index.json"}) {
    SafetensorsSet set = SafetensorsSet::open(src);
    std::vector<std::string> expected_names;
    for (const auto& kv : in) expected_names.push_back(kv.first);
    EXPECT_EQ(set.names(), expected_names);  // already sorted
    EXPECT_EQ(set.total_bytes(), 5u * 400u);
    EXPECT_EQ(set.files().size(), 3u);
    EXPECT_EQ(set.where("layer0.w"), set.where("layer1.w"));
    EXPECT_NE(set.where("layer0.w"), set.where("layer2.w"));
    EXPECT_NE(set.where("layer4.w").find("model-00003-of-00003.safetensors"), std::string::npos);
    for (const auto& [name, t] : in) {
      EXPECT_TRUE(set.has(name));
      EXPECT_TRUE(torch::equal(set.get(name, {10, 10}), t));
      EXPECT_EQ(set.info(name).dtype, DType::F32);
    }
    EXPECT_FALSE(set.has("nope"));
    expect_user_error([&] { set.get("nope"); }, set.source(), "not found");
  }
  auto shard = SafetensorsFile::open(d + "/model-00001-of-00003.safetensors");
  EXPECT_EQ(shard->metadata().at("format"), "pt");

  // Rewriting the same directory as one file must not leave the old index shadowing it.
  ecdlm::io::save_safetensors_sharded(d, {{"only", torch::ones({2})}}, 1 << 20);
  EXPECT_FALSE(fs::exists(d + "/model.safetensors.index.json"));
  SafetensorsSet single = SafetensorsSet::open(d);
  EXPECT_EQ(single.names(), std::vector<std::string>{"only"});
  EXPECT_EQ(single.where("only"), (fs::path(d) / "model.safetensors").string());
  EXPECT_EQ(SafetensorsSet::open(d + "/model.safetensors").names().size(), 1u);
}

TEST_F(Safetensors, ShapeCheckAndMissingTensorErrors) {
  const std::string p = path("s.safetensors");
  ecdlm::io::save_safetensors(p, {{"w", torch::zeros({2, 3})}});
  auto f = SafetensorsFile::open(p);
  expect_user_error([&] { f->get("w", {3, 2}); }, p, "shape [2, 3] but expected [3, 2]");
  expect_user_error([&] { f->get("absent"); }, p, "'absent'");
  expect_user_error([&] { SafetensorsSet::open(p).get("w", {6}); }, p, "expected [6]");
  expect_user_error([&] { SafetensorsSet::open(path("missing_dir")); }, path("missing_dir"),
                    "does not exist");
  fs::create_directories(path("emptydir"));
  expect_user_error([&] { SafetensorsSet::open(path("emptydir")); }, path("emptydir"),
                    "model.safetensors");
}

TEST_F(Safetensors, WriterRejectsBadInput) {
  const std::string p = path("bad_w.safetensors");
  expect_user_error(
      [&] { ecdlm::io::save_safetensors(p, {{"a", torch::ones({1})}, {"a", torch::ones({1})}}); },
      p, "duplicate");
  expect_user_error(
      [&] { ecdlm::io::save_safetensors(p, {{"c", torch::ones({1}, torch::kComplexFloat)}}); }, p,
      "unsupported");
  expect_user_error([&] { ecdlm::io::save_safetensors(p, {{"u", torch::Tensor()}}); }, p,
                    "undefined");
  EXPECT_FALSE(fs::exists(p));
  EXPECT_THROW(ecdlm::io::dtype_from_torch(torch::kComplexDouble), UserError);
  EXPECT_EQ(ecdlm::io::dtype_to_torch(ecdlm::io::dtype_from_torch(torch::kBFloat16)),
            torch::kBFloat16);
  EXPECT_EQ(ecdlm::io::dtype_name(DType::I8), "I8");
  EXPECT_EQ(ecdlm::io::dtype_size(DType::F64), 8u);
}

TEST_F(Safetensors, RejectsMalformedFiles) {
  const std::string f4 = le_bytes<float>({1.f, 2.f});  // 8 bytes of data
  auto entry = [](const std::string& name, const std::string& dtype, const std::string& shape,
                  const std::string& offsets) {
    return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
           ",\"data_offsets\":" + offsets + "}";
  };
  expect_open_fails(write_bytes("short.safetensors", "12345"), "shorter than");
  expect_open_fails(write_bytes("hdr_end.safetensors", le_bytes<uint64_t>({1000}) + "{}"),
                    "runs past the end");
  expect_open_fails(write_bytes("hdr_huge.safetensors", le_bytes<uint64_t>({~0ull}) + "{}"),
                    "runs past the end");
  expect_open_fails(write_st("json.safetensors", "{\"a\": [1, 2", ""), "invalid JSON");
  expect_open_fails(write_st("array.safetensors", "[1, 2]", ""), "not a JSON object");
  expect_open_fails(write_st("dtype.safetensors", "{" + entry("w", "F8", "[2]", "[0,2]") + "}",
                             f4), "unknown dtype");
  expect_open_fails(write_st("nodtype.safetensors",
                             R"({"w":{"shape":[2],"data_offsets":[0,8]}})", f4), "dtype");
  expect_open_fails(write_st("trunc.safetensors", "{" + entry("w", "F32", "[4]", "[0,16]") + "}",
                             f4), "past the end of the data section");
  expect_open_fails(write_st("size.safetensors", "{" + entry("w", "F32", "[3]", "[0,8]") + "}",
                             f4), "needs 12");
  expect_open_fails(write_st("overlap.safetensors", "{" + entry("a", "F32", "[1]", "[0,4]") + "," +
                                                        entry("b", "F32", "[1]", "[2,6]") + "}",
                             f4), "overlap");
  expect_open_fails(write_st("neg.safetensors", "{" + entry("w", "F32", "[-2]", "[0,8]") + "}",
                             f4), "non-negative");
  expect_open_fails(write_st("float_dim.safetensors",
                             "{" + entry("w", "F32", "[2.0]", "[0,8]") + "}", f4), "non-negative");
  // numel itself overflows int64, and numel fits but numel*itemsize overflows uint64.
  expect_open_fails(write_st("huge1.safetensors", "{" + entry("w", "F32",
                             "[4611686018427387904,4]", "[0,8]") + "}", f4), "overflow");
  expect_open_fails(write_st("huge2.safetensors", "{" + entry("w", "F32",
                             "[2305843009213693952,2]", "[0,8]") + "}", f4), "overflow");
  expect_open_fails(write_st("huge3.safetensors", "{" + entry("w", "F32",
                             "[99999999999999999999999]", "[0,8]") + "}", f4), "non-negative");
  expect_open_fails(write_st("order.safetensors", "{" + entry("w", "F32", "[0]", "[8,4]") + "}",
                             f4), "begin > end");
  expect_open_fails(write_st("offs.safetensors", "{" + entry("w", "F32", "[2]", "[0]") + "}", f4),
                    "data_offsets");
  expect_open_fails(write_st("dup.safetensors", "{" + entry("w", "F32", "[1]", "[0,4]") + "," +
                                                    entry("w", "F32", "[1]", "[4,8]") + "}",
                             f4), "duplicate");
  expect_open_fails(write_st("meta.safetensors", R"({"__metadata__":{"n":3}})", ""),
                    "not a string");
  expect_open_fails(write_st("notobj.safetensors", R"({"w":[1,2]})", ""), "not a JSON object");
  expect_open_fails(path("does_not_exist.safetensors"), "cannot open");
}

TEST_F(Safetensors, RejectsBrokenIndex) {
  const std::string d = path("idx");
  fs::create_directories(d);
  ecdlm::io::save_safetensors(d + "/a.safetensors", {{"x", torch::ones({2})}, {"y", torch::ones({1})}});
  ecdlm::io::save_safetensors(d + "/b.safetensors", {{"y", torch::zeros({1})}});
  const std::string index = d + "/model.safetensors.index.json";
  auto write_index = [&](const std::string& weight_map) {
    std::ofstream(index) << R"({"metadata":{"total_size":12},"weight_map":)" << weight_map << "}";
  };

  write_index(R"({"x":"a.safetensors","z":"missing.safetensors"})");
  expect_user_error([&] { SafetensorsSet::open(d); }, index, "missing.safetensors does not exist");

  write_index(R"({"x":"a.safetensors","q":"b.safetensors"})");
  expect_user_error([&] { SafetensorsSet::open(d); }, index, "does not contain");

  write_index(R"({"x":"a.safetensors","y":"b.safetensors"})");  // a also stores y
  expect_user_error([&] { SafetensorsSet::open(d); }, index, "two shards");

  write_index(R"({"x":"a.safetensors","x":"a.safetensors"})");
  expect_user_error([&] { SafetensorsSet::open(d); }, index, "duplicate");

  write_index(R"([])");
  expect_user_error([&] { SafetensorsSet::open(d); }, index, "weight_map");

  write_index(R"({"x":"a.safetensors","y":"a.safetensors"})");  // valid; b is simply unused
  SafetensorsSet ok = SafetensorsSet::open(d);
  EXPECT_EQ(ok.names(), (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(ok.get("y").item<float>(), 1.f);
}

TEST_F(Safetensors, ReadsPythonWrittenTinyFixture) {
  const std::string p = ECDLM_SOURCE_DIR "/../shared/golden/tiny/model.safetensors";
  if (!fs::exists(p)) GTEST_SKIP() << "fixture missing: " << p;
  SafetensorsSet set = SafetensorsSet::open(p);
  torch::Tensor emb_300x64 = set.get("model.word_embeddings.weight", {300, 64});
  EXPECT_EQ(emb_300x64.scalar_type(), torch::kFloat);
  EXPECT_TRUE(torch::isfinite(emb_300x64).all().item<bool>());
  uint64_t bytes = 0;
  for (const std::string& name : set.names()) {
    torch::Tensor t = set.get(name);
    bytes += static_cast<uint64_t>(t.numel()) * t.element_size();
    // Touch every byte: a bad offset would fault or produce garbage here.
    EXPECT_TRUE(torch::isfinite(t.to(torch::kDouble)).all().item<bool>()) << name;
  }
  EXPECT_EQ(bytes, set.total_bytes());
  EXPECT_GT(set.names().size(), 1u);
}
