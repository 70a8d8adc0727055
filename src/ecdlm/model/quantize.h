// Quantized checkpoints (issue 18): which tensors `convert --quantize` packs, the packed tensors
// it writes (io/quant_format.h layouts under derived names), the config.json `quantization`
// block, and the readers the loader and the header check use.
//
// A linear weight `X.weight` [N, K] is stored as `X.qweight`, `X.scales` (and `X.mins` for q4);
// stacked experts `...mlp.experts.<proj>` [E, N, K] as `...mlp.experts.<proj>.qweight` [E, N, K']
// etc. (row-wise packing, so expert e is the contiguous slice [e]). Layout: docs/quantization-format.md.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "ecdlm/io/quant_format.h"
#include "ecdlm/io/safetensors.h"

namespace ecdlm {

// What a quantizable tensor is, by its checkpoint name (either architecture's names):
// "experts", "shared_experts", "dense_mlp", "attention", "lm_head"; "" for anything else
// (embedding, norms, router gate and expert_bias: never quantized).
std::string quant_category(const std::string& name);

struct QuantizeParams {
  std::string format;                // q8 | q4 (| q4s); "" = no quantization
  int64_t group = 32;                // 32 or 64
  std::vector<std::string> include;  // categories or regexes searched in tensor names; empty = default set
  std::vector<std::string> exclude;  // the same, removed from the set
  bool lm_head = false;              // also quantize lm_head.weight
};

// The io format of p ("q8" + group 32 -> q8_g32). UserError naming the flag otherwise.
io::QuantFormat quantize_format(const QuantizeParams& p);
// Whether tensor `name` is quantized under p: a category in the default set (experts, shared
// experts, dense MLP, attention; + lm_head with the flag) or matching include, and not matching
// exclude. A routed expert's tensor (per-expert `<prefix>.mlp.experts.<e>.<proj>.weight` or stacked
// `<prefix>.mlp.experts.<proj>`) is decided by its module's canonical name
// `<prefix>.mlp.experts.gate_proj`, so a layer's experts are packed all or none whatever the
// patterns (the loader takes nothing else). `splits_experts` tells when the tensor's own name
// would have been decided otherwise (convert warns).
class QuantSelector {
 public:
  explicit QuantSelector(const QuantizeParams& p);
  bool selects(const std::string& name) const;
  bool splits_experts(const std::string& name) const;

 private:
  bool decide(const std::string& name, const std::string& cat) const;
  std::vector<std::string> include_, exclude_;
  bool lm_head_;
};
// "<prefix>.mlp.experts.gate_proj" for a routed expert tensor of any layout; other names as they are.
std::string quant_selection_name(const std::string& name);
// Whether a weight of `shape` [..., N, K] in `category` can be packed in f: K a multiple of the
// group, and for routed experts N too (down's K is gate's N, so an expert packs whole). The one
// rule of convert --quantize and quantize_model.
bool quantizable_shape(const std::string& category, const std::vector<int64_t>& shape, io::QuantFormat f);

// The config.json block: {"quant_method": "ecdlm", "format": "q8_g32", "bits": 8, "group_size": 32,
// "scale_dtype": "float16", "zero_point": false, "quantized": [categories], "include": [...],
// "exclude": [...], "lm_head": false, "tensors": n, "not_quantized": [names whose K is not a
// multiple of the group]}.
nlohmann::json quantization_block(const QuantizeParams& p, const std::vector<std::string>& categories,
                                  int64_t tensors, const std::vector<std::string>& not_quantized);

// "X.weight" -> "X"; anything else (a stacked expert tensor) unchanged.
std::string quant_base(const std::string& weight_name);
// Whether the checkpoint stores `weight_name` quantized (its base has a .qweight).
bool stored_quantized(const io::SafetensorsSet& st, const std::string& weight_name);
// Any quantized tensor in the checkpoint.
bool any_quantized(const io::SafetensorsSet& st);

// The logical shape ([..., N, K]) of the packed weight stored for `weight_name`, from the header
// (the .qweight's shape, its last dim doubled for 4-bit codes).
std::vector<int64_t> quantized_shape(const io::SafetensorsSet& st, const std::string& weight_name);
// Checks the packed tensors of `weight_name` against its logical `shape` from the header alone
// and returns their format. UserError naming the file and tensor on any mismatch.
io::QuantFormat check_quantized_header(const io::SafetensorsSet& st, const std::string& weight_name,
                                       const std::vector<int64_t>& shape);
// The packed weight stored for `weight_name` of logical shape [N, K] or [E, N, K] (stacked
// experts): one QuantWeight (views of the mapping) per leading index, or one. The format follows
// from the tensors (int8 -> q8; uint8 with mins -> q4, without -> q4s; group K / scales' last dim).
// `used` receives the tensor names read. UserError naming the file and tensor on any mismatch.
std::vector<io::QuantWeight> read_quantized(const io::SafetensorsSet& st, const std::string& weight_name,
                                            const std::vector<int64_t>& shape, std::vector<std::string>* used);
// Rows of several packed weights of one format and K, one after another (LLaDA-MoE's q/k/v into
// the fused QKV): a copy.
io::QuantWeight concat_rows(const std::vector<io::QuantWeight>& parts, const std::string& name);

// The packed tensors for a pending tensor `src` (a [N, K] weight or [E, N, K] stacked experts):
// qweight, scales (and mins), quantizing once when the first is written (memory: one tensor).
std::vector<io::PendingTensor> quantized_pending(const io::PendingTensor& src, io::QuantFormat f);

class MoeDlmImpl;
// In memory: packs the selected linear weights of `model` (internal llada2 names, as a
// llada2_moe checkpoint names them) and binds them as the loader binds a quantized file: the same
// forward as convert --quantize + a mapped load (benchmarks, tests). Returns the weights packed.
int64_t quantize_model(MoeDlmImpl& model, const QuantizeParams& p);
// Builds the output-lane copies (kernels/quant_repack.h) of every packed weight of `model` (routed
// and shared experts, dense MLPs, attention projections, a packed LM head) now, in parallel, so no
// decoding step pays a first-use copy: with repacking on, the few-row and the token-lane kernels
// both read them, and the row layout's codes are handed back to the kernel (kernels::prepack_quant).
// Returns the weights packed; *released (when given): the bytes of the row layout (codes, scales, minimums) handed back.
int64_t prepack_quantized(MoeDlmImpl& model, int64_t* released = nullptr);
// Bytes of the packed weights of `model` (codes, scales, minimums): about what their output-lane
// copies take. 0 for a model without quantized weights.
int64_t quantized_bytes(MoeDlmImpl& model);
// The output-lane copies of a quantized model for the kernel in use (kernels::quant_kernel_backend),
// as every reader's --quant-repack sets them. mode "auto": with the vnni kernel, all built now when
// they take at most 70% of the available memory (each weight's rows handed back as its copy is
// made, so the copies are what stays), else each weight's on its first use (an expert never routed
// to is never copied); "on": all built now; "off": none. Sets kernels::set_quant_repack and returns
// what it did, for the log. A model without quantized weights: repacking off, "".
std::string setup_quant_copies(MoeDlmImpl& model, const std::string& mode);

}  // namespace ecdlm
