// The LLaDA2 / Ling (Bailing) chat format (dmoe-llada2.md §6):
//   <role>SYSTEM</role>{system}<|role_end|><role>HUMAN</role>{user}<|role_end|><role>ASSISTANT</role>
// The system turn is optional (left out when there is none, as chatllm does).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "ecdlm/text/tokenizer.h"

namespace ecdlm::text {

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

inline constexpr const char* kRoleEndPiece = "<|role_end|>";

// Renders the messages; with add_generation_prompt the text ends with the open assistant turn
// "<role>ASSISTANT</role>". An unknown role is a UserError.
std::string apply_llada2_chat(const std::vector<ChatMessage>& messages, bool add_generation_prompt);

// Ids that end an answer: <|role_end|> (if the vocabulary has it), then eos and pad, without
// duplicates and without -1.
std::vector<int32_t> llada2_stop_ids(const Tokenizer& tok);

// The same, then the eos_token_id (an id or a list) and pad_token_id of model_dir's config.json and
// generation_config.json, where present (LLaDA2.0-mini stops on pad = eos 156892). An id outside
// [0, vocab_size) or invalid JSON is a UserError naming the file and key.
std::vector<int32_t> llada2_stop_ids(const Tokenizer& tok, const std::string& model_dir, int64_t vocab_size);

// True if <role>, </role> and <|role_end|> each encode as one token (a Ling / LLaDA2 tokenizer).
// Any other tokenizer would split the template's markers into plain text the model never saw.
bool is_llada2_chat_tokenizer(const Tokenizer& tok);

}  // namespace ecdlm::text
