// `ecdlm bench generate`: decoding speed and expert traffic under each routing policy, with the
// KV cache on and off, side by side in one run (src/ecdlm/bench/generate_bench.h).
#include <filesystem>
#include <iostream>

#include "commands.h"
#include "ecdlm/bench/generate_bench.h"
#include "ecdlm/bench/generate_plot.h"
#include "ecdlm/kernels/quant.h"
#include "ecdlm/util/fs.h"
#include "ecdlm/util/huge_pages.h"
#include "ecdlm/util/log.h"
#include "ecdlm/util/plot.h"
#include "ecdlm/util/strings.h"

namespace ecdlm::cli {
namespace {

struct GenBenchArgs {
  bench::GenBenchParams p;
  bool json = false;
  std::string out_md, out_json, plot;
  std::string quant_kernel = "auto";  // --bench-quant-kernel
};

int run(const GenBenchArgs& a) {
  const auto& p = a.p;
  kernels::set_quant_kernel(kernels::parse_quant_kernel(a.quant_kernel, "--bench-quant-kernel"));
  const std::string policies = p.policies.empty() ? "all" : join(p.policies), kernels = join(p.kernels);
  LOG_INFO("bench generate: quick " << p.quick << ", brown model '" << p.brown_model << "', synthetic MoE layers "
                                    << p.synth_moe_layers << ", vocab " << p.synth_vocab << ", prompt " << p.prompt_len
                                    << ", gen " << p.gen_length << ", block " << p.block_length << ", reps " << p.reps
                                    << ", seed " << p.seed << ", policies " << policies << ", kernels "
                                    << kernels << ", weights " << (p.quant.empty() ? "bf16" : join(p.quant)) << " (quantized kernel "
                                    << kernels::quant_kernel_name(kernels::quant_kernel_backend()) << "), huge pages " << (huge_pages::enabled() ? "on" : "off")
                                    << " (THP " << huge_pages::thp_mode() << ")");
  auto rows = bench::run_generate_bench(p);
  const auto md = bench::to_markdown(rows, p);
  if (!a.out_md.empty()) write_file_atomic(a.out_md, md);
  if (!a.out_json.empty()) write_file_atomic(a.out_json, bench::to_json(rows).dump(2) + "\n");
  if (!a.plot.empty() && bench::plot_generate(rows, a.plot)) std::cout << a.plot << "\n";
  if (a.json)
    std::cout << bench::to_json(rows).dump(2) << std::endl;
  else
    std::cout << md;
  return 0;
}

}  // namespace

void register_bench_generate(CLI::App* bench) {
  auto a = std::make_shared<GenBenchArgs>();
  auto* sub = bench->add_subcommand(
      "generate", "Decoding: token vs dMoE block (p 0.5/0.6/0.8) vs top-k vs DES-S / DES-V (our interpretation) vs "
                  "EC routing, KV cache on/off");
  sub->add_flag("--quick", a->p.quick,
                "Reduced run: 2 MoE layers, a 32-token prompt, 64 tokens, 1 repetition (each unless given by its "
                "flag), and block p 0.6 only: under 2 minutes");
  sub->add_flag("--json", a->json, "Print {\"results\": [...]} as JSON");
  sub->add_option("--bench-brown-model", a->p.brown_model, "Token-choice Brown model directory (\"\" = skip)")
      ->capture_default_str();
  sub->add_option("--bench-synth-layers", a->p.synth_moe_layers, "MoE layers of the synthetic LLaDA2-shaped model")
      ->capture_default_str()->check(CLI::Range(1, 20));
  sub->add_option("--bench-synth-vocab", a->p.synth_vocab, "Vocabulary of the synthetic model")
      ->capture_default_str()->check(CLI::Range(64, 200000));
  sub->add_option("--bench-prompt-length", a->p.prompt_len, "Prompt tokens")->capture_default_str()->check(CLI::PositiveNumber);
  sub->add_option("--bench-gen-length", a->p.gen_length, "Generated tokens (the KV cache on/off comparison too)")
      ->capture_default_str()->check(CLI::PositiveNumber);
  sub->add_option("--bench-policies", a->p.policies,
                  "Only these routing policies (comma list; default all): token, block, topk, des-s, des-v, ec")
      ->delimiter(',')
      ->check(CLI::IsMember({"token", "block", "topk", "des-s", "des-v", "ec"}));
  sub->add_option("--bench-kv-cache", a->p.kv_cache,
                  "Only these KV cache settings (comma list; default both): on, off (on alone skips the slow "
                  "uncached forwards and the cache speedup table)")
      ->delimiter(',')
      ->check(CLI::IsMember({"on", "off"}));
  sub->add_option("--bench-kernels", a->p.kernels,
                  "Small-M kernels to compare (comma list): auto, amx, avx512, torch (kernels/small_m.h)")
      ->delimiter(',')
      ->check(CLI::IsMember({"auto", "amx", "avx512", "torch"}))
      ->capture_default_str();
  sub->add_option("--bench-quant", a->p.quant,
                  "Weight formats of the synthetic model side by side (comma list): bf16, q8, q4, q4s, q8_g64, "
                  "q4_g64 (convert --quantize's default set of weights), run as the readers run them by default "
                  "(--quant-repack auto: on output-lane copies where the kernel is AVX512-VNNI); a '+head' suffix "
                  "(q4+head) packs the LM head too (--quantize-lm-head); a last '+rows' suffix (q4+rows, q4+head+rows) "
                  "keeps the row layout (--quant-repack off), '+repack' asks for the copies")
      ->delimiter(',')
      ->check([](const std::string& v) {
        const auto strip = [](std::string s, const std::string& suffix) {
          return s.size() > suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0
                     ? s.substr(0, s.size() - suffix.size())
                     : s;
        };
        const std::string f = strip(strip(strip(v, "+repack"), "+rows"), "+head");
        for (const char* ok : {"bf16", "q8", "q4", "q4s", "q8_g32", "q8_g64", "q4_g32", "q4_g64", "q4s_g32", "q4s_g64"})
          if (f == ok && !(f == "bf16" && f != v)) return std::string();
        return "unknown format '" + v + "': use bf16, q8, q4, q4s, q8_g64, q4_g64, ... optionally with +head and then +rows or +repack";
      });
  sub->add_option("--bench-quant-kernel", a->quant_kernel,
                  "The quantized variants' kernel, as the readers' --quant-kernel: auto, amx (AMX-INT8 tiles from "
                  "9 token rows), vnni, avx2, bf16 or torch")
      ->check(CLI::IsMember({"auto", "amx", "vnni", "avx2", "bf16", "torch"}))
      ->capture_default_str();
  sub->add_option("--bench-block-length", a->p.block_length, "Block length (= the coreset chunk)")
      ->capture_default_str()->check(CLI::PositiveNumber);
  sub->add_option("--bench-reps", a->p.reps, "Repetitions (variants interleaved; medians)")
      ->capture_default_str()->check(CLI::PositiveNumber);
  sub->add_option("--bench-seed", a->p.seed, "Seed for the synthetic weights and the prompt")->capture_default_str();
  sub->add_option("--out-md", a->out_md, "Also write the markdown table here");
  sub->add_option("--out-json", a->out_json, "Also write the --json document here (`ecdlm plot --bench-generate` redraws it)");
  sub->add_option("--plot", a->plot, "PNG: MoE ms per forward against unique experts per block, a labelled point per policy");
  set_runner(sub, [a, sub] {
    // --quick's sizes for the flags not given (an explicit --bench-reps 3 --quick keeps its 3).
    auto args = *a;
    const auto given = [&](const char* flag) { return sub->count(flag) > 0; };
    if (args.p.quick) {
      if (!given("--bench-synth-layers")) args.p.synth_moe_layers = 2;
      if (!given("--bench-reps")) args.p.reps = 1;
      if (!given("--bench-gen-length")) args.p.gen_length = 64;
      if (!given("--bench-prompt-length")) args.p.prompt_len = 32;
    }
    return run(args);
  });
}

}  // namespace ecdlm::cli
