#include "ecdlm/text/unicode.h"

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/stringpiece.h>
#include <unicode/uchar.h>

#include <stdexcept>

namespace ecdlm::text::uni {
namespace {

// Checks the sequence at p[0..n): returns its length if it is one valid UTF-8 character, else 0
// and sets `bad` to the length of the maximal subpart to replace (at least 1).
size_t check_seq(const unsigned char* p, size_t n, size_t& bad) {
  const unsigned char b0 = p[0];
  if (b0 < 0x80) return 1;
  size_t len;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) len = 2;
  else if (b0 >= 0xE0 && b0 <= 0xEF) {
    len = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    len = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    bad = 1;
    return 0;
  }
  size_t i = 1;
  for (; i < len; ++i) {
    if (i >= n) break;
    const unsigned char b = p[i];
    const unsigned char l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
    if (b < l || b > h) break;
  }
  if (i == len) return len;
  bad = i;
  return 0;
}

struct StringSink : icu::ByteSink {
  std::string* out;
  explicit StringSink(std::string* o) : out(o) {}
  void Append(const char* bytes, int32_t n) override { out->append(bytes, static_cast<size_t>(n)); }
};

bool all_ascii(std::string_view s) {
  for (unsigned char c : s)
    if (c >= 0x80) return false;
  return true;
}

ByteLevelTables make_tables() {
  ByteLevelTables t{};
  for (auto& v : t.cp_to_byte) v = -1;
  uint32_t extra = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    const uint32_t cp = printable ? static_cast<uint32_t>(b) : 256 + extra++;
    t.byte_to_cp[b] = cp;
    t.cp_to_byte[cp] = static_cast<int16_t>(b);
    std::string u;
    append_utf8(u, cp);
    t.byte_to_utf8_len[b] = static_cast<uint8_t>(u.size());
    for (size_t i = 0; i < u.size(); ++i) t.byte_to_utf8[b][i] = u[i];
  }
  return t;
}

}  // namespace

size_t valid_utf8_prefix(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    if (p[i] < 0x80) {
      ++i;
      continue;
    }
    size_t bad = 0;
    const size_t len = check_seq(p + i, n - i, bad);
    if (len == 0) return i;
    i += len;
  }
  return n;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string from_utf8_lossy(std::string_view bytes) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  std::string out;
  out.reserve(n);
  size_t i = 0;
  while (i < n) {
    size_t bad = 0;
    const size_t len = check_seq(p + i, n - i, bad);
    if (len) {
      out.append(bytes.data() + i, len);
      i += len;
    } else {
      out += "\xEF\xBF\xBD";
      i += bad;
    }
  }
  return out;
}

const ByteLevelTables& byte_level() {
  static const ByteLevelTables t = make_tables();
  return t;
}

void byte_level_encode(std::string_view raw, std::string& out) {
  const auto& t = byte_level();
  for (unsigned char b : raw) out.append(t.byte_to_utf8[b], t.byte_to_utf8_len[b]);
}

bool byte_level_decode(std::string_view token, std::string& out) {
  const auto& t = byte_level();
  const size_t start = out.size();
  size_t i = 0;
  while (i < token.size()) {
    const size_t l = cp_len(static_cast<unsigned char>(token[i]));
    if (i + l > token.size()) break;
    const uint32_t cp = next_cp(token, i);
    if (cp >= 324 || t.cp_to_byte[cp] < 0) {
      out.resize(start);
      return false;
    }
    out.push_back(static_cast<char>(t.cp_to_byte[cp]));
  }
  if (i != token.size()) {
    out.resize(start);
    return false;
  }
  return true;
}

std::string normalize(std::string_view s, NormForm form) {
  if (all_ascii(s)) return std::string(s);  // ASCII is invariant under all four forms
  UErrorCode err = U_ZERO_ERROR;
  const icu::Normalizer2* n = nullptr;
  switch (form) {
    case NormForm::kNFC: n = icu::Normalizer2::getNFCInstance(err); break;
    case NormForm::kNFD: n = icu::Normalizer2::getNFDInstance(err); break;
    case NormForm::kNFKC: n = icu::Normalizer2::getNFKCInstance(err); break;
    case NormForm::kNFKD: n = icu::Normalizer2::getNFKDInstance(err); break;
  }
  if (U_FAILURE(err)) throw std::runtime_error("ICU normalizer unavailable");
  const icu::StringPiece sp(s.data(), static_cast<int32_t>(s.size()));
  if (n->isNormalizedUTF8(sp, err) && U_SUCCESS(err)) return std::string(s);
  err = U_ZERO_ERROR;
  std::string out;
  StringSink sink(&out);
  n->normalizeUTF8(0, sp, sink, nullptr, err);
  if (U_FAILURE(err)) throw std::runtime_error("ICU normalization failed");
  return out;
}

std::string to_lower(std::string_view s) {
  if (all_ascii(s)) {
    std::string out(s);
    for (char& c : out)
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
    return out;
  }
  // Per character, as Rust's char::to_lowercase: no context (a final sigma stays σ). The only
  // unconditional multi-character lowercase mapping is U+0130.
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const uint32_t cp = next_cp(s, i);
    if (cp == 0x130) out += "i\xCC\x87";
    else append_utf8(out, static_cast<uint32_t>(u_tolower(static_cast<UChar32>(cp))));
  }
  return out;
}

std::string strip_accents(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const size_t start = i;
    const uint32_t cp = next_cp(s, i);
    if ((U_GET_GC_MASK(static_cast<UChar32>(cp)) & U_GC_M_MASK) == 0) out.append(s.data() + start, i - start);
  }
  return out;
}

bool is_whitespace(uint32_t cp) {
  if (cp < 0x80) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D);
  return u_isUWhiteSpace(static_cast<UChar32>(cp));
}

bool is_alphanumeric(uint32_t cp) {
  if (cp < 0x80)
    return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z');
  if (u_hasBinaryProperty(static_cast<UChar32>(cp), UCHAR_ALPHABETIC)) return true;
  const int8_t t = u_charType(static_cast<UChar32>(cp));
  return t == U_DECIMAL_DIGIT_NUMBER || t == U_LETTER_NUMBER || t == U_OTHER_NUMBER;
}

size_t leading_whitespace_bytes(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    size_t j = i;
    if (!is_whitespace(next_cp(s, j))) break;
    i = j;
  }
  return i;
}

size_t trailing_whitespace_bytes(std::string_view s) {
  size_t end = s.size();
  while (end > 0) {
    size_t start = end - 1;
    while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
    size_t j = start;
    if (!is_whitespace(next_cp(s, j))) break;
    end = start;
  }
  return s.size() - end;
}

bool starts_with_word_char(std::string_view s) {
  if (s.empty()) return false;
  size_t i = 0;
  return is_alphanumeric(next_cp(s, i));
}

bool ends_with_word_char(std::string_view s) {
  if (s.empty()) return false;
  size_t start = s.size() - 1;
  while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
  return is_alphanumeric(next_cp(s, start));
}

}  // namespace ecdlm::text::uni
