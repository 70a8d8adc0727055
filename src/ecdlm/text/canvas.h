// A diffusion canvas as text: what `generate --canvas` draws and the server streams.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "ecdlm/text/tokenizer.h"

namespace ecdlm::text {

// `ids` with runs of real tokens decoded together and each `mask` id shown as U+2591 (░).
std::string render_canvas(const Tokenizer& tok, const std::vector<int64_t>& ids, int64_t mask);

}  // namespace ecdlm::text
