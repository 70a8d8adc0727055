// libFuzzer target: the tokenizer.json loader (and, when a file loads, encode/decode).
// Any input must either load or raise UserError; encode must not crash on what loads.
// Build and run: scripts/fuzz.sh tokenizer_json [SECONDS]
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "ecdlm/text/hf_tokenizer.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/log.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  ecdlm::set_log_level(ecdlm::LogLevel::kError);  // "ignored setting" warnings would flood
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    auto tok = ecdlm::text::HfTokenizer::load_json_text(text, "fuzz.json");
    const auto ids = tok->encode("Hello, world! <|endoftext|> 123 \xe4\xb8\xad\xe6\x96\x87 \n\n  x", true);
    (void)tok->decode(ids);
  } catch (const ecdlm::UserError&) {
  }
  return 0;
}
