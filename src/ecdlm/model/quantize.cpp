#include "ecdlm/model/quantize.h"

#include <chrono>
#include <cstdio>
#include <memory>
#include <regex>

#include "ecdlm/kernels/quant_repack.h"
#include "ecdlm/model/moe_dlm.h"
#include "ecdlm/kernels/quant.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/log.h"
#include "ecdlm/util/profile.h"
#include "ecdlm/util/strings.h"

namespace ecdlm {
namespace {

const char* const kCategories[] = {"experts", "shared_experts", "dense_mlp", "attention", "lm_head"};

bool is_category(const std::string& s) {
  for (const char* c : kCategories)
    if (s == c) return true;
  return false;
}

bool matches(const std::string& pattern, const std::string& name, const std::string& cat) {
  if (is_category(pattern)) return pattern == cat;
  return std::regex_search(name, std::regex(pattern));
}

void check_patterns(const std::vector<std::string>& ps, const char* flag) {
  for (const auto& p : ps) {
    if (p.empty()) fail("", flag, "empty pattern", "pass categories or regexes separated by commas");
    if (is_category(p)) continue;
    try {
      std::regex re(p);
    } catch (const std::regex_error& e) {
      fail("", flag, "'" + p + "' is neither a category nor a valid regex (" + e.what() + ")",
           "use experts, shared_experts, dense_mlp, attention, lm_head or an ECMAScript regex");
    }
  }
}

}  // namespace

std::string quant_category(const std::string& n) {
  if (n == "lm_head.weight") return "lm_head";
  const bool proj = ends_with(n, "gate_proj.weight") || ends_with(n, "up_proj.weight") ||
                    ends_with(n, "down_proj.weight");
  if (n.find(".mlp.experts.") != std::string::npos) {
    if (proj || ends_with(n, "experts.gate_proj") || ends_with(n, "experts.up_proj") || ends_with(n, "experts.down_proj"))
      return "experts";
    return "";
  }
  if (n.find("shared_expert") != std::string::npos) return proj ? "shared_experts" : "";
  if (ends_with(n, ".mlp.gate_proj.weight") || ends_with(n, ".mlp.up_proj.weight") || ends_with(n, ".mlp.down_proj.weight"))
    return "dense_mlp";
  for (const char* a : {".attention.query_key_value.weight", ".attention.dense.weight", ".self_attn.q_proj.weight",
                        ".self_attn.k_proj.weight", ".self_attn.v_proj.weight", ".self_attn.o_proj.weight"})
    if (ends_with(n, a)) return "attention";
  return "";
}

io::QuantFormat quantize_format(const QuantizeParams& p) {
  if (p.format != "q8" && p.format != "q4" && p.format != "q4s")
    fail("", "--quantize", "unknown format '" + p.format + "'", "use q8 or q4 (q4s: 4-bit without minimum)");
  if (p.group != 32 && p.group != 64) fail("", "--quantize-group", "group " + std::to_string(p.group), "use 32 or 64");
  return io::parse_quant_format(p.format + "_g" + std::to_string(p.group), "--quantize");
}

QuantSelector::QuantSelector(const QuantizeParams& p) : include_(p.include), exclude_(p.exclude), lm_head_(p.lm_head) {
  check_patterns(include_, "--quantize-include");
  check_patterns(exclude_, "--quantize-exclude");
}

bool QuantSelector::decide(const std::string& name, const std::string& cat) const {
  if (cat.empty()) return false;
  bool in = false;
  if (cat == "lm_head" && lm_head_) {
    in = true;
  } else if (include_.empty()) {
    in = cat != "lm_head";
  } else {
    for (const auto& p : include_) in = in || matches(p, name, cat);
  }
  for (const auto& p : exclude_) in = in && !matches(p, name, cat);
  return in;
}

bool QuantSelector::selects(const std::string& name) const {
  return decide(quant_selection_name(name), quant_category(name));
}

bool QuantSelector::splits_experts(const std::string& name) const {
  const std::string cat = quant_category(name);
  return cat == "experts" && decide(name, cat) != decide(quant_selection_name(name), cat);
}

std::string quant_selection_name(const std::string& name) {
  const auto p = name.find(".mlp.experts.");
  if (p == std::string::npos || quant_category(name) != "experts") return name;
  return name.substr(0, p) + ".mlp.experts.gate_proj";
}

bool quantizable_shape(const std::string& category, const std::vector<int64_t>& shape, io::QuantFormat f) {
  if (shape.size() < 2 || shape.back() < 1 || shape.back() % f.group != 0) return false;
  return category != "experts" || shape[shape.size() - 2] % f.group == 0;
}

nlohmann::json quantization_block(const QuantizeParams& p, const std::vector<std::string>& categories,
                                  int64_t tensors, const std::vector<std::string>& not_quantized) {
  const auto f = quantize_format(p);
  return {{"quant_method", "ecdlm"},
          {"format", io::quant_format_name(f)},
          {"bits", f.kind == io::QuantKind::kQ8 ? 8 : 4},
          {"group_size", f.group},
          {"scale_dtype", "float16"},
          {"zero_point", f.kind == io::QuantKind::kQ4},
          {"quantized", categories},
          {"include", p.include},
          {"exclude", p.exclude},
          {"lm_head", p.lm_head},
          {"tensors", tensors},
          {"not_quantized", not_quantized}};
}

std::string quant_base(const std::string& n) {
  return ends_with(n, ".weight") ? n.substr(0, n.size() - 7) : n;
}

bool stored_quantized(const io::SafetensorsSet& st, const std::string& weight_name) {
  return st.has(quant_base(weight_name) + ".qweight");
}

bool any_quantized(const io::SafetensorsSet& st) {
  for (const auto& n : st.names())
    if (ends_with(n, ".qweight")) return true;
  return false;
}

std::vector<int64_t> quantized_shape(const io::SafetensorsSet& st, const std::string& weight_name) {
  const std::string qn = quant_base(weight_name) + ".qweight";
  const auto& qi = st.info(qn);
  auto shape = qi.shape;
  if (!shape.empty() && qi.dtype == io::DType::U8) shape.back() *= 2;
  return shape;
}

io::QuantFormat check_quantized_header(const io::SafetensorsSet& st, const std::string& weight_name,
                                       const std::vector<int64_t>& shape) {
  const std::string base = quant_base(weight_name), qn = base + ".qweight", sn = base + ".scales", mn = base + ".mins";
  if (!st.has(qn))
    fail(st.source(), qn, "missing: the checkpoint packs some of this module's weights but not this one",
         "re-run ecdlm convert --quantize (it packs routed experts all or none)");
  if (!st.has(sn)) fail(st.source(), sn, "missing beside " + qn, "re-run ecdlm convert --quantize");
  const auto& qi = st.info(qn);
  const auto& si = st.info(sn);
  const bool q8 = qi.dtype == io::DType::I8;
  if (!q8 && qi.dtype != io::DType::U8)
    fail(st.where(qn), qn, "packed weights must be I8 (q8) or U8 (q4), not " + io::dtype_name(qi.dtype),
         "re-run ecdlm convert --quantize");
  if (shape.size() < 2) fail(st.where(qn), qn, "a packed tensor must be a matrix or stacked matrices");
  const int64_t K = shape.back(), N = shape[shape.size() - 2];
  std::vector<int64_t> want_q = shape;
  want_q.back() = q8 ? K : K / 2;
  if (qi.shape != want_q || (!q8 && K % 2 != 0))
    fail(st.where(qn), qn, "shape does not match the weight the config implies (N = " + std::to_string(N) +
                                ", K = " + std::to_string(K) + ")",
         "use the config.json that came with these weights");
  if (si.shape.size() != shape.size() || si.shape.back() < 1 || K % si.shape.back() != 0 || si.dtype != io::DType::F16)
    fail(st.where(sn), sn, "must be F16 with a last dim dividing the input dimension " + std::to_string(K),
         "re-run ecdlm convert --quantize");
  io::QuantFormat f;
  f.kind = q8 ? io::QuantKind::kQ8 : st.has(mn) ? io::QuantKind::kQ4 : io::QuantKind::kQ4Sym;
  f.group = K / si.shape.back();
  if (f.group != 32 && f.group != 64)
    fail(st.where(sn), sn, "group size " + std::to_string(f.group) + " is not supported", "use 32 or 64");
  if (f.kind == io::QuantKind::kQ4 && (st.info(mn).shape != si.shape || st.info(mn).dtype != io::DType::F16))
    fail(st.where(mn), mn, "must be F16 shaped as " + sn, "re-run ecdlm convert --quantize");
  return f;
}

std::vector<io::QuantWeight> read_quantized(const io::SafetensorsSet& st, const std::string& weight_name,
                                            const std::vector<int64_t>& shape, std::vector<std::string>* used) {
  const auto f = check_quantized_header(st, weight_name, shape);
  const std::string base = quant_base(weight_name), qn = base + ".qweight", sn = base + ".scales", mn = base + ".mins";
  auto q = st.get(qn), s = st.get(sn);
  torch::Tensor m = f.kind == io::QuantKind::kQ4 ? st.get(mn) : torch::Tensor();
  if (used) {
    used->push_back(qn);
    used->push_back(sn);
    if (m.defined()) used->push_back(mn);
  }
  std::vector<io::QuantWeight> out;
  if (shape.size() == 2) {
    out.push_back(io::make_quant_weight(f, q, s, m, st.where(qn) + ": " + base));
    return out;
  }
  for (int64_t e = 0; e < shape[0]; ++e)
    out.push_back(io::make_quant_weight(f, q[e], s[e], m.defined() ? m[e] : torch::Tensor(),
                                        st.where(qn) + ": " + base + "[" + std::to_string(e) + "]"));
  return out;
}

io::QuantWeight concat_rows(const std::vector<io::QuantWeight>& parts, const std::string& name) {
  std::vector<torch::Tensor> q, s, m;
  for (const auto& p : parts) {
    if (!(p.format == parts[0].format) || p.K != parts[0].K)
      fail("", name, "parts are quantized differently (" + io::quant_format_name(p.format) + " vs " +
                         io::quant_format_name(parts[0].format) + ")",
           "quantize q, k and v alike");
    q.push_back(p.qweight);
    s.push_back(p.scales);
    if (p.mins.defined()) m.push_back(p.mins);
  }
  return io::make_quant_weight(parts[0].format, torch::cat(q, 0), torch::cat(s, 0),
                               m.empty() ? torch::Tensor() : torch::cat(m, 0), name);
}

std::vector<io::PendingTensor> quantized_pending(const io::PendingTensor& src, io::QuantFormat f) {
  const auto& shape = src.shape;
  const int64_t K = shape.back();
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < shape.size(); ++i) rows *= shape[i];
  // The first of the packed tensors to be written quantizes; the last one frees it again.
  auto cache = std::make_shared<io::QuantWeight>();
  auto make = src.make;
  auto get = [cache, make, f, rows, K]() -> const io::QuantWeight& {
    if (!cache->qweight.defined()) {
      auto w = make();
      if (w.scalar_type() != torch::kFloat32 && w.scalar_type() != torch::kBFloat16) w = w.to(torch::kFloat32);
      *cache = io::quantize(w.reshape({rows, K}), f);
    }
    return *cache;
  };
  const std::string base = quant_base(src.name);
  const bool has_mins = f.kind == io::QuantKind::kQ4;
  std::vector<io::PendingTensor> out;
  auto add = [&](const std::string& suffix, io::DType dt, int64_t cols, int which, bool last) {
    io::PendingTensor p;
    p.name = base + suffix;
    p.dtype = dt;
    p.shape = shape;
    p.shape.back() = cols;
    const auto out_shape = p.shape;
    p.make = [cache, get, which, last, out_shape] {
      const auto& q = get();
      auto t = (which == 0 ? q.qweight : which == 1 ? q.scales : q.mins).reshape(out_shape);
      if (last) *cache = io::QuantWeight();  // t keeps its own storage alive
      return t;
    };
    out.push_back(std::move(p));
  };
  add(".qweight", f.kind == io::QuantKind::kQ8 ? io::DType::I8 : io::DType::U8,
      f.kind == io::QuantKind::kQ8 ? K : K / 2, 0, false);
  add(".scales", io::DType::F16, K / f.group, 1, !has_mins);
  if (has_mins) add(".mins", io::DType::F16, K / f.group, 2, true);
  return out;
}

int64_t quantize_model(MoeDlmImpl& model, const QuantizeParams& p) {
  const auto f = quantize_format(p);
  const QuantSelector sel(p);
  torch::NoGradGuard ng;
  int64_t n = 0;
  for (const auto& m : model.named_modules()) {
    if (auto lin = std::dynamic_pointer_cast<LinearNoBiasImpl>(m.value())) {
      const std::string name = m.key() + ".weight";
      if (lin->quantized() || !sel.selects(name) ||
          !quantizable_shape(quant_category(name), lin->weight.sizes().vec(), f))
        continue;
      lin->bind_quantized(io::quantize(lin->weight.to(torch::kFloat32), f));
      ++n;
    } else if (auto ex = std::dynamic_pointer_cast<moe::ExpertsImpl>(m.value())) {
      if (ex->quantized() || !sel.selects(m.key() + ".gate_proj") ||
          !quantizable_shape("experts", ex->gate_w(0).sizes().vec(), f))
        continue;
      std::vector<io::QuantWeight> q[3];
      for (int64_t e = 0; e < ex->num_experts(); ++e) {
        q[0].push_back(io::quantize(ex->gate_w(e).to(torch::kFloat32), f));
        q[1].push_back(io::quantize(ex->up_w(e).to(torch::kFloat32), f));
        q[2].push_back(io::quantize(ex->down_w(e).to(torch::kFloat32), f));
      }
      ex->bind_quantized(std::move(q[0]), std::move(q[1]), std::move(q[2]));
      n += 3;
    }
  }
  return n;
}

namespace {

// Every packed weight of `model`: routed experts, then the linears (shared experts, dense MLPs,
// attention projections, a packed LM head).
std::vector<const io::QuantWeight*> quantized_weights(MoeDlmImpl& model) {
  std::vector<const io::QuantWeight*> ws;
  for (const auto& m : model.named_modules())
    if (auto ex = std::dynamic_pointer_cast<moe::ExpertsImpl>(m.value()); ex && ex->quantized()) {
      for (int proj = 0; proj < 3; ++proj)
        for (int64_t e = 0; e < ex->num_experts(); ++e) ws.push_back(&ex->quant_w(proj, e));
    } else if (auto lin = std::dynamic_pointer_cast<LinearNoBiasImpl>(m.value()); lin && lin->quantized()) {
      ws.push_back(&lin->quant());
    }
  return ws;
}

}  // namespace

int64_t prepack_quantized(MoeDlmImpl& model, int64_t* released) {
  const auto ws = quantized_weights(model);
  const int64_t r = kernels::prepack_quant(ws);
  if (released) *released = r;
  return static_cast<int64_t>(ws.size());
}

int64_t quantized_bytes(MoeDlmImpl& model) {
  int64_t bytes = 0;
  for (const auto* w : quantized_weights(model)) bytes += w->bytes();
  return bytes;
}

std::string setup_quant_copies(MoeDlmImpl& model, const std::string& mode) {
  kernels::set_quant_repack(false);
  const int64_t bytes = quantized_bytes(model);
  if (bytes == 0) return "";
  const auto backend = kernels::quant_kernel_backend();
  const int64_t avail = prof::available_memory_bytes();
  const auto size = [](int64_t b) { return size_str(static_cast<double>(b)); };
  if (mode == "off") return "off (--quant-repack off)";
  if (!kernels::is_vnni(backend))
    return "off (--quant-repack " + mode + ": the " + std::string(kernels::quant_kernel_name(backend)) +
           " kernel reads the rows)";
  kernels::set_quant_repack(true);
  if (mode == "on" && avail >= 0 && bytes > avail * 4 / 5)
    LOG_WARN("--quant-repack on: the copies (" << size(bytes) << ") exceed 80% of the " << size(avail)
                                               << " of available memory");
  if (mode == "auto" && avail >= 0 && bytes > avail * 7 / 10) {
    kernels::reserve_quant_copies(bytes + bytes / 8);  // + padding to 16-row blocks and alignment
    return "on (--quant-repack auto), each built on its first use: all of them (" + size(bytes) +
           ") would take more than 70% of the " + size(avail) + " of available memory";
  }
  const auto t0 = std::chrono::steady_clock::now();
  int64_t released = 0;
  const int64_t n = prepack_quantized(model, &released);
  char buf[256];
  std::snprintf(buf, sizeof(buf), "on (--quant-repack %s): %lld weights, %s, repacked in %.2f s; %s of the row layout "
                "handed back, RSS %s",
                mode.c_str(), static_cast<long long>(n), size(bytes).c_str(),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), size(released).c_str(),
                size_str(prof::rss_bytes()).c_str());
  return buf;
}

}  // namespace ecdlm
