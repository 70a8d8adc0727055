// UTF-8 and Unicode helpers for the Hugging Face tokenizer: validation, the GPT-2 byte<->unicode
// map, lossy decoding and the ICU-backed normalizations / properties that tokenizer.json uses.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace ecdlm::text::uni {

// Length in bytes of the valid UTF-8 prefix of `s` (== s.size() iff valid).
size_t valid_utf8_prefix(std::string_view s);
inline bool is_valid_utf8(std::string_view s) { return valid_utf8_prefix(s) == s.size(); }

// Decodes one code point at s[i] (s must be valid UTF-8); advances i.
inline uint32_t next_cp(std::string_view s, size_t& i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) { ++i; return b0; }
  if (b0 < 0xE0) {
    const uint32_t c = ((b0 & 0x1Fu) << 6) | (static_cast<unsigned char>(s[i + 1]) & 0x3Fu);
    i += 2;
    return c;
  }
  if (b0 < 0xF0) {
    const uint32_t c = ((b0 & 0x0Fu) << 12) | ((static_cast<unsigned char>(s[i + 1]) & 0x3Fu) << 6) |
                       (static_cast<unsigned char>(s[i + 2]) & 0x3Fu);
    i += 3;
    return c;
  }
  const uint32_t c = ((b0 & 0x07u) << 18) | ((static_cast<unsigned char>(s[i + 1]) & 0x3Fu) << 12) |
                     ((static_cast<unsigned char>(s[i + 2]) & 0x3Fu) << 6) |
                     (static_cast<unsigned char>(s[i + 3]) & 0x3Fu);
  i += 4;
  return c;
}
// Byte length of the code point starting with lead byte `b0`.
inline size_t cp_len(unsigned char b0) { return b0 < 0x80 ? 1 : b0 < 0xE0 ? 2 : b0 < 0xF0 ? 3 : 4; }
void append_utf8(std::string& out, uint32_t cp);

// Rust's String::from_utf8_lossy: each maximal invalid subsequence becomes one U+FFFD.
std::string from_utf8_lossy(std::string_view bytes);

// GPT-2's byte-level alphabet: every byte maps to one printable code point (< 324).
struct ByteLevelTables {
  uint32_t byte_to_cp[256];
  char byte_to_utf8[256][3];  // NUL-padded UTF-8 of byte_to_cp (1 or 2 bytes)
  uint8_t byte_to_utf8_len[256];
  int16_t cp_to_byte[324];    // -1 where the code point is not in the alphabet
};
const ByteLevelTables& byte_level();
// Appends the byte-level rendering of raw bytes (each byte -> its alphabet character).
void byte_level_encode(std::string_view raw, std::string& out);
// Inverse for one token: true and the bytes appended if every character is in the alphabet.
bool byte_level_decode(std::string_view token, std::string& out);

// Unicode normalization forms (ICU). The input must be valid UTF-8.
enum class NormForm { kNFC, kNFD, kNFKC, kNFKD };
std::string normalize(std::string_view s, NormForm form);
std::string to_lower(std::string_view s);         // per character, as Rust char::to_lowercase
std::string strip_accents(std::string_view s);    // drops combining marks (Mn, Mc, Me)

// Rust char predicates.
bool is_whitespace(uint32_t cp);   // White_Space
bool is_alphanumeric(uint32_t cp); // Alphabetic or Nd/Nl/No

// Rust str::trim_start / trim_end (White_Space), as byte counts.
size_t leading_whitespace_bytes(std::string_view s);
size_t trailing_whitespace_bytes(std::string_view s);
// First / last character alphanumeric (false for an empty string).
bool starts_with_word_char(std::string_view s);
bool ends_with_word_char(std::string_view s);

}  // namespace ecdlm::text::uni
