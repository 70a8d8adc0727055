// config.json against the safetensors header, before a model is built: a config whose shapes
// disagree with the weights (num_experts = 10^9) must name the key and the tensor, not end in
// std::bad_alloc while MoeDlm allocates what the config implies.
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <functional>
#include <sstream>

#include "ecdlm/model/checkpoint_check.h"
#include "ecdlm/model/quantize.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/strings.h"

namespace ecdlm {
namespace {

const char* const kProjs[] = {"gate_proj", "up_proj", "down_proj"};

std::string shape_str(const std::vector<int64_t>& s) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << "]";
  return o.str();
}

// "a = 1, b = 2" -> "a or b": the keys a fix may change.
std::string key_names(const std::string& label) {
  std::string out;
  size_t pos = 0;
  while (pos < label.size()) {
    size_t end = label.find(", ", pos);
    if (end == std::string::npos) end = label.size();
    const std::string part = label.substr(pos, end - pos);
    if (!out.empty()) out += end == label.size() ? " or " : ", ";
    out += part.substr(0, part.find(" = "));
    pos = end + 2;
  }
  return out;
}

std::string kv(const char* key, int64_t v) { return std::string(key) + " = " + std::to_string(v); }
std::string kv(const char* key, bool v) { return std::string(key) + " = " + (v ? "true" : "false"); }

// Visits every tensor of MoeDlm(c) in checkpoint-independent (llada2_moe internal) names; stops
// as soon as `visit` returns false, so a config of 10^9 layers costs one layer past the file's.
void visit_expected(const ModelConfig& c, const std::function<bool(const ExpectedTensor&)>& visit) {
  const int64_t D = c.hidden_size, hd = c.head_dim, H = c.num_attention_heads, Hkv = c.num_key_value_heads;
  const bool llada = c.arch == Arch::kLladaMoe;  // its config.json names the widths differently
  const std::string dkey = kv("hidden_size", D);
  const std::string heads = kv("num_attention_heads", H) + ", " + kv("num_key_value_heads", Hkv) + ", " +
                            kv("head_dim", hd);
  auto t = [](std::string name, std::vector<int64_t> shape, std::vector<std::string> keys,
              std::string exists_because = "", bool buffer = false) {
    return ExpectedTensor{std::move(name), std::move(shape), std::move(keys), std::move(exists_because), buffer};
  };
  if (!visit(t("model.word_embeddings.weight", {c.vocab_size, D}, {kv("vocab_size", c.vocab_size), dkey})))
    return;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const std::string layers = kv("num_hidden_layers", c.num_hidden_layers);
    std::vector<ExpectedTensor> v = {
        t(p + "input_layernorm.weight", {D}, {dkey}, layers),
        t(p + "attention.query_key_value.weight", {(H + 2 * Hkv) * hd, D}, {heads, dkey}, layers),
        t(p + "attention.dense.weight", {D, H * hd}, {dkey, kv("num_attention_heads", H) + ", " + kv("head_dim", hd)},
          layers),
        t(p + "post_attention_layernorm.weight", {D}, {dkey}, layers)};
    if (c.use_qk_norm)
      for (const char* n : {"query_layernorm", "key_layernorm"})
        v.push_back(t(p + "attention." + n + ".weight", {hd}, {kv("head_dim", hd)}, kv("use_qk_norm", true)));
    const std::string dense = kv("first_k_dense_replace", c.first_k_dense_replace);
    if (c.is_moe_layer(l)) {
      const int64_t E = c.num_experts, F = c.moe_intermediate_size, S = c.shared_expert_intermediate_size;
      const std::string ekey = kv("num_experts", E), fkey = kv(llada ? "expert_intermediate_size" : "moe_intermediate_size", F);
      v.push_back(t(p + "mlp.gate.weight", {E, D}, {ekey, dkey}, dense));
      if (c.moe_router_enable_expert_bias || c.moe_loss_free_bias_rate > 0)
        v.push_back(t(p + "mlp.gate.expert_bias", {E}, {ekey}, kv("moe_router_enable_expert_bias", true), true));
      if (S > 0) {
        // LLaDA2 configs give the shared expert's width as a multiple of the routed one's.
        const std::string skey = kv(llada ? "shared_expert_intermediate_size"
                                          : "num_shared_experts * moe_intermediate_size", S);
        v.push_back(t(p + "mlp.shared_experts.gate_proj.weight", {S, D}, {skey, dkey}, skey));
        v.push_back(t(p + "mlp.shared_experts.up_proj.weight", {S, D}, {skey, dkey}, skey));
        v.push_back(t(p + "mlp.shared_experts.down_proj.weight", {D, S}, {dkey, skey}, skey));
      }
      v.push_back(t(p + "mlp.experts.gate_proj", {E, F, D}, {ekey, fkey, dkey}, dense));
      v.push_back(t(p + "mlp.experts.up_proj", {E, F, D}, {ekey, fkey, dkey}, dense));
      v.push_back(t(p + "mlp.experts.down_proj", {E, D, F}, {ekey, dkey, fkey}, dense));
    } else {
      const int64_t I = c.intermediate_size;
      const std::string ikey = kv(llada ? "dense_intermediate_size" : "intermediate_size", I);
      v.push_back(t(p + "mlp.gate_proj.weight", {I, D}, {ikey, dkey}, dense));
      v.push_back(t(p + "mlp.up_proj.weight", {I, D}, {ikey, dkey}, dense));
      v.push_back(t(p + "mlp.down_proj.weight", {D, I}, {dkey, ikey}, dense));
    }
    for (const auto& e : v)
      if (!visit(e)) return;
  }
  if (!visit(t("model.norm.weight", {D}, {dkey}))) return;
  visit(t("lm_head.weight", {c.vocab_size, D}, {kv("vocab_size", c.vocab_size), dkey}));
}

class HeaderCheck {
 public:
  HeaderCheck(const ModelConfig& c, const io::SafetensorsSet& st, const std::string& cfg_path)
      : c_(c), st_(st), cfg_(cfg_path) {}

  // One expected tensor under its file name(s); `keys` name the config keys of each dim.
  void expect(const std::string& file_name, const std::vector<int64_t>& shape, const std::vector<std::string>& keys,
              const std::string& exists_because) {
    // A packed weight (convert --quantize): its logical shape is checked as a plain tensor's.
    const bool packed = !st_.has(file_name) && stored_quantized(st_, file_name);
    if (packed) {
      const std::string qn = quant_base(file_name) + ".qweight";
      const auto file_shape = quantized_shape(st_, file_name);
      if (file_shape == shape) {
        check_quantized_header(st_, file_name, shape);
        return;
      }
      mismatch(qn, file_shape, shape, keys);
    }
    if (!st_.has(file_name)) {
      const std::string missing = st_.source() + ": tensor '" + file_name + "' is missing";
      if (exists_because.empty()) fail(st_.source(), file_name, "tensor missing from the checkpoint",
                                       "use the config.json that came with these weights");
      fail(cfg_, "", exists_because + " disagrees with " + missing + ", the config implies it",
           "use the config.json that came with these weights, or correct " + key_names(exists_because));
    }
    const auto& info = st_.info(file_name);
    if (info.dtype != io::DType::F32 && info.dtype != io::DType::BF16 && info.dtype != io::DType::F16)
      fail(st_.where(file_name), file_name, "weights stored as " + io::dtype_name(info.dtype) + " are not supported",
           "store weights as F32, BF16 or F16");
    if (info.shape == shape) return;
    mismatch(file_name, info.shape, shape, keys);
  }

  [[noreturn]] void mismatch(const std::string& file_name, const std::vector<int64_t>& file_shape,
                             const std::vector<int64_t>& shape, const std::vector<std::string>& keys) {
    size_t d = 0;  // the first dim that differs names the key (a rank mismatch names them all)
    while (file_shape.size() == shape.size() && d < shape.size() && file_shape[d] == shape[d]) ++d;
    std::string key;
    if (file_shape.size() != shape.size()) {
      for (const auto& k : keys) key += (key.empty() ? "" : ", ") + k;
    } else {
      key = keys[d];
    }
    std::string fix = "use the config.json that came with these weights, or correct " + key_names(key);
    // A dim that is one key's value itself: say which value the checkpoint holds.
    if (file_shape.size() == shape.size() && d < shape.size() && key.find_first_of(",*") == std::string::npos &&
        ends_with(key, " = " + std::to_string(shape[d])))
      fix = "set " + key_names(key) + " to " + std::to_string(file_shape[d]) +
            " (what the checkpoint holds), or use the config.json that came with these weights";
    fail(cfg_, "", key + (key.find(',') == std::string::npos ? " disagrees" : " disagree") + " with " +
                       st_.where(file_name) + ": tensor '" + file_name + "' has shape " + shape_str(file_shape) +
                       ", the config implies " + shape_str(shape),
         fix);
  }

  void check(const ExpectedTensor& t) {
    const bool llada = c_.arch == Arch::kLladaMoe;
    for (int p = 0; p < 3; ++p) {
      const std::string suf = std::string("mlp.experts.") + kProjs[p];
      if (!ends_with(t.name, suf)) continue;
      if (st_.has(t.name) || stored_quantized(st_, t.name)) return expect(t.name, t.shape, t.keys, t.exists_because);  // stacked
      // Per expert: [F, D] / [D, F] each. The router (checked first) already pinned E to the
      // file's count, so this loop is as long as the checkpoint.
      const std::vector<int64_t> one(t.shape.begin() + 1, t.shape.end());
      const std::vector<std::string> keys(t.keys.begin() + 1, t.keys.end());
      const std::string prefix = t.name.substr(0, t.name.size() - std::strlen(kProjs[p]));  // "...experts."
      for (int64_t e = 0; e < t.shape[0]; ++e)
        expect(prefix + std::to_string(e) + "." + kProjs[p] + ".weight", one, keys, t.keys[0]);
      return;
    }
    if (llada && ends_with(t.name, ".attention.query_key_value.weight")) {
      const std::string base = t.name.substr(0, t.name.size() - std::strlen("attention.query_key_value.weight"));
      const int64_t D = c_.hidden_size, hd = c_.head_dim;
      const std::string hk = kv("head_dim", hd), dk = kv("hidden_size", D);
      expect(base + "self_attn.q_proj.weight", {c_.num_attention_heads * hd, D},
             {kv("num_attention_heads", c_.num_attention_heads) + ", " + hk, dk}, t.exists_because);
      for (const char* n : {"k_proj", "v_proj"})
        expect(base + "self_attn." + n + ".weight", {c_.num_key_value_heads * hd, D},
               {kv("num_key_value_heads", c_.num_key_value_heads) + ", " + hk, dk}, t.exists_because);
      return;
    }
    expect(llada ? llada_moe_checkpoint_name(t.name) : t.name, t.shape, t.keys, t.exists_because);
  }

 private:
  const ModelConfig& c_;
  const io::SafetensorsSet& st_;
  std::string cfg_;
};

}  // namespace

std::vector<ExpectedTensor> expected_tensors(const ModelConfig& c) {
  std::vector<ExpectedTensor> out;
  visit_expected(c, [&](const ExpectedTensor& t) {
    out.push_back(t);
    return true;
  });
  return out;
}

double expected_parameters(const ModelConfig& c) {
  const double D = static_cast<double>(c.hidden_size), hd = static_cast<double>(c.head_dim);
  const double H = static_cast<double>(c.num_attention_heads), Hkv = static_cast<double>(c.num_key_value_heads);
  const double E = static_cast<double>(c.num_experts), F = static_cast<double>(c.moe_intermediate_size);
  const double S = static_cast<double>(c.shared_expert_intermediate_size), I = static_cast<double>(c.intermediate_size);
  const double bias = c.moe_router_enable_expert_bias || c.moe_loss_free_bias_rate > 0 ? E : 0.0;
  const double layer = 2 * D + D * (H + 2 * Hkv) * hd + H * hd * D + (c.use_qk_norm ? 2 * hd : 0.0);
  const double moe = static_cast<double>(c.num_moe_layers()), dense = static_cast<double>(c.num_hidden_layers) - moe;
  return 2 * static_cast<double>(c.vocab_size) * D + D + static_cast<double>(c.num_hidden_layers) * layer +
         moe * (E * D + bias + 3 * E * F * D + 3 * S * D) + dense * 3 * I * D;
}

void check_model_fits_memory(const ModelConfig& c, const std::string& source, double bytes_per_param,
                             const std::string& what) {
  const double ram = static_cast<double>(::sysconf(_SC_PHYS_PAGES)) * static_cast<double>(::sysconf(_SC_PAGE_SIZE));
  const double params = expected_parameters(c), need = params * bytes_per_param;
  if (ram <= 0 || need <= ram) return;
  char msg[256];
  std::snprintf(msg, sizeof(msg), "the model has %.3g parameters: %s needs %.3g GiB, this machine has %.3g GiB",
                params, what.c_str(), need / 1073741824.0, ram / 1073741824.0);
  fail(source, "", msg, "check num_experts, hidden_size, num_hidden_layers and vocab_size");
}

void check_checkpoint_header(const ModelConfig& c, const io::SafetensorsSet& st, const std::string& cfg_path) {
  HeaderCheck hc(c, st, cfg_path);
  // Experts last: the router (which names num_experts) comes first, and routed experts before the
  // shared one, whose LLaDA2 width is derived from the routed width.
  std::vector<ExpectedTensor> routed, shared;
  visit_expected(c, [&](const ExpectedTensor& t) {
    if (t.name.find(".mlp.experts.") != std::string::npos) {
      routed.push_back(t);
    } else if (t.name.find(".mlp.shared_experts.") != std::string::npos) {
      shared.push_back(t);
    } else {
      hc.check(t);
    }
    return true;
  });
  for (const auto& t : routed) hc.check(t);
  for (const auto& t : shared) hc.check(t);
}

}  // namespace ecdlm
