#include "ecdlm/text/chat.h"

#include <algorithm>
#include <filesystem>

#include "ecdlm/util/error.h"
#include "ecdlm/util/fs.h"

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

std::vector<int32_t> llada2_stop_ids(const Tokenizer& tok, const std::string& model_dir, int64_t vocab_size) {
  auto ids = llada2_stop_ids(tok);
  auto add = [&](const std::string& file, const std::string& key, const nlohmann::json& v) {
    if (!v.is_number_integer())
      fail(file, key, "expected a token id (or a list of them)", "fix the file or remove the key");
    const int64_t id = v.get<int64_t>();
    if (id < 0 || id >= vocab_size)
      fail(file, key, "token id " + std::to_string(id) + " outside the vocabulary (size " + std::to_string(vocab_size) + ")",
           "fix the file: it does not belong to this model");
    if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(static_cast<int32_t>(id));
  };
  for (const char* name : {"config.json", "generation_config.json"}) {
    const auto path = (std::filesystem::path(model_dir) / name).string();
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) continue;
    const auto j = read_json_file(path);
    for (const char* key : {"eos_token_id", "pad_token_id"}) {
      if (!j.is_object() || !j.contains(key) || j[key].is_null()) continue;
      if (j[key].is_array()) {
        for (size_t i = 0; i < j[key].size(); ++i) add(path, std::string(key) + "[" + std::to_string(i) + "]", j[key][i]);
      } else {
        add(path, key, j[key]);
      }
    }
  }
  return ids;
}

bool is_llada2_chat_tokenizer(const Tokenizer& tok) {
  // Each marker must encode as one token, as an added token does (a plain vocab entry would not).
  for (const char* piece : {"<role>", "</role>", kRoleEndPiece})
    if (tok.encode(piece, false).size() != 1) return false;
  return true;
}

}  // namespace ecdlm::text
