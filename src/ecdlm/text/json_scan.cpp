#include "ecdlm/text/json_scan.h"

#include "ecdlm/text/unicode.h"
#include "ecdlm/util/error.h"

namespace ecdlm::text {

void JsonScanner::error(const std::string& path, const std::string& problem) const {
  fail(file_, path.empty() ? "(top level)" : path,
       problem + " at byte " + std::to_string(p_ - begin_), "check that the file is valid tokenizer JSON");
}

void JsonScanner::expect(char c, const std::string& path) {
  ws();
  if (peek() != c) error(path, std::string("expected '") + c + "'");
  ++p_;
}

void JsonScanner::skip_literal(const char* lit, const std::string& path) {
  for (const char* l = lit; *l; ++l, ++p_)
    if (p_ >= end_ || *p_ != *l) error(path, std::string("invalid literal (expected ") + lit + ")");
}

uint32_t JsonScanner::hex4(const std::string& path) {
  if (end_ - p_ < 4) error(path, "truncated \\u escape");
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i, ++p_) {
    const char c = *p_;
    v <<= 4;
    if (c >= '0' && c <= '9') v |= static_cast<uint32_t>(c - '0');
    else if (c >= 'a' && c <= 'f') v |= static_cast<uint32_t>(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') v |= static_cast<uint32_t>(c - 'A' + 10);
    else error(path, "invalid \\u escape");
  }
  return v;
}

std::string_view JsonScanner::string(const std::string& path, std::string& buf) {
  ws();
  if (peek() != '"') error(path, "expected a string");
  ++p_;
  const char* start = p_;
  // Fast path: no escapes.
  while (p_ < end_ && *p_ != '"' && *p_ != '\\' && static_cast<unsigned char>(*p_) >= 0x20) ++p_;
  if (p_ >= end_) error(path, "unterminated string");
  if (*p_ == '"') {
    std::string_view v(start, static_cast<size_t>(p_ - start));
    ++p_;
    if (!uni::is_valid_utf8(v)) error(path, "string is not valid UTF-8");
    return v;
  }
  buf.assign(start, static_cast<size_t>(p_ - start));
  while (p_ < end_ && *p_ != '"') {
    const char c = *p_++;
    if (static_cast<unsigned char>(c) < 0x20) error(path, "control character in string");
    if (c != '\\') { buf.push_back(c); continue; }
    if (p_ >= end_) break;
    const char e = *p_++;
    switch (e) {
      case '"': buf.push_back('"'); break;
      case '\\': buf.push_back('\\'); break;
      case '/': buf.push_back('/'); break;
      case 'b': buf.push_back('\b'); break;
      case 'f': buf.push_back('\f'); break;
      case 'n': buf.push_back('\n'); break;
      case 'r': buf.push_back('\r'); break;
      case 't': buf.push_back('\t'); break;
      case 'u': {
        uint32_t cp = hex4(path);
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          if (end_ - p_ < 6 || p_[0] != '\\' || p_[1] != 'u') error(path, "unpaired surrogate in \\u escape");
          p_ += 2;
          const uint32_t lo = hex4(path);
          if (lo < 0xDC00 || lo > 0xDFFF) error(path, "invalid surrogate pair in \\u escape");
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
          error(path, "unpaired surrogate in \\u escape");
        }
        uni::append_utf8(buf, cp);
        break;
      }
      default: error(path, "invalid escape in string");
    }
  }
  if (p_ >= end_) error(path, "unterminated string");
  ++p_;
  if (!uni::is_valid_utf8(buf)) error(path, "string is not valid UTF-8");
  return buf;
}

int64_t JsonScanner::integer(const std::string& path) {
  ws();
  bool neg = false;
  if (peek() == '-') { neg = true; ++p_; }
  if (!(peek() >= '0' && peek() <= '9')) error(path, "expected an integer");
  int64_t v = 0;
  while (peek() >= '0' && peek() <= '9') {
    if (v > (int64_t{1} << 40)) error(path, "integer out of range");
    v = v * 10 + (*p_++ - '0');
  }
  if (peek() == '.' || peek() == 'e' || peek() == 'E') error(path, "expected an integer");
  return neg ? -v : v;
}

std::string_view JsonScanner::skip_value(const std::string& path) {
  ws();
  const char* start = p_;
  std::string buf;
  switch (peek()) {
    case '{':
      if (++depth_ > 256) error(path, "nesting too deep");
      object(path, [&](const std::string&, const std::string& sub) { skip_value(sub); });
      --depth_;
      break;
    case '[':
      if (++depth_ > 256) error(path, "nesting too deep");
      array(path, [&](size_t, const std::string& sub) { skip_value(sub); });
      --depth_;
      break;
    case '"': string(path, buf); break;
    case 't': skip_literal("true", path); break;
    case 'f': skip_literal("false", path); break;
    case 'n': skip_literal("null", path); break;
    default: {
      if (peek() == '-') ++p_;
      if (!(peek() >= '0' && peek() <= '9')) error(path, "expected a JSON value");
      while (p_ < end_ && ((*p_ >= '0' && *p_ <= '9') || *p_ == '.' || *p_ == 'e' || *p_ == 'E' ||
                           *p_ == '+' || *p_ == '-'))
        ++p_;
    }
  }
  return std::string_view(start, static_cast<size_t>(p_ - start));
}

nlohmann::json JsonScanner::value(const std::string& path) {
  const std::string_view raw = skip_value(path);
  try {
    return nlohmann::json::parse(raw.begin(), raw.end());
  } catch (const nlohmann::json::exception& e) {
    error(path, std::string("invalid JSON value: ") + e.what());
  }
}

void JsonScanner::finish() {
  ws();
  if (p_ != end_) error("", "unexpected data after the top-level object");
}

}  // namespace ecdlm::text
