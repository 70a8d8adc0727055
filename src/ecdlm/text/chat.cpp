#include "ecdlm/text/chat.h"

#include <algorithm>

#include "ecdlm/util/error.h"

namespace ecdlm::text {

std::string apply_llada2_chat(const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
  std::string out;
  for (size_t i = 0; i < messages.size(); ++i) {
    const auto& m = messages[i];
    const char* tag = m.role == "system" ? "SYSTEM" : m.role == "user" ? "HUMAN" : m.role == "assistant" ? "ASSISTANT" : nullptr;
    if (!tag)
      fail("", "messages[" + std::to_string(i) + "].role", "unknown chat role '" + m.role + "'",
           "use system, user or assistant");
    out += "<role>";
    out += tag;
    out += "</role>";
    out += m.content;
    out += kRoleEndPiece;
  }
  if (add_generation_prompt) out += "<role>ASSISTANT</role>";
  return out;
}

std::vector<int32_t> llada2_stop_ids(const Tokenizer& tok) {
  std::vector<int32_t> ids;
  for (int32_t id : {tok.piece_to_id(kRoleEndPiece), tok.eos_id(), tok.pad_id()})
    if (id >= 0 && std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
  return ids;
}

}  // namespace ecdlm::text
