#define PCRE2_CODE_UNIT_WIDTH 8
#include "ecdlm/text/regex.h"

#include <pcre2.h>

#include <stdexcept>

#include "ecdlm/text/unicode.h"
#include "ecdlm/util/error.h"

namespace ecdlm::text {
namespace {

constexpr const char* kSpace = "\\t-\\r\\x{85}\\p{Z}";
// Oniguruma's word class: letters, marks, Nd, Nl, Pc. Outside brackets its Latin-1 ctype table
// also makes the superscript digits and vulgar fractions word characters; inside brackets not.
constexpr const char* kWord = "\\p{L}\\p{M}\\p{Nd}\\p{Nl}\\p{Pc}";
constexpr const char* kWordLatin1 = "\\x{B2}\\x{B3}\\x{B9}\\x{BC}-\\x{BE}";

// Per-thread match state: one ovector pair and a JIT stack big enough for long whitespace runs.
struct MatchState {
  pcre2_match_data* md = nullptr;
  pcre2_match_context* ctx = nullptr;
  pcre2_jit_stack* stack = nullptr;
  MatchState() {
    md = pcre2_match_data_create(1, nullptr);
    ctx = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    if (!md || !ctx || !stack) throw std::bad_alloc();
    pcre2_jit_stack_assign(ctx, nullptr, stack);
  }
  ~MatchState() {
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(ctx);
    pcre2_match_data_free(md);
  }
};
MatchState& match_state() {
  thread_local MatchState s;
  return s;
}

}  // namespace

std::string onig_to_pcre2(const std::string& p) {
  std::string out;
  out.reserve(p.size() + 16);
  int class_depth = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char n = p[i + 1];
      const bool in_class = class_depth > 0;
      const std::string word_outside = std::string(kWord) + kWordLatin1;
      if (n == 's' || n == 'w') {
        const std::string body = n == 's' ? kSpace : in_class ? kWord : word_outside;
        out += in_class ? body : "[" + body + "]";
      } else if ((n == 'S' || n == 'W') && !in_class) {
        out += "[^" + (n == 'S' ? std::string(kSpace) : word_outside) + "]";
      } else {
        out += c;
        out += n;
      }
      ++i;
      continue;
    }
    if (c == '[') {
      ++class_depth;
      out += c;
      // A ']' right after '[' or '[^' is a literal member.
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];
      continue;
    }
    if (c == ']' && class_depth > 0) --class_depth;
    out += c;
  }
  return out;
}

std::string regex_escape(std::string_view literal) {
  std::string out = "\\Q";
  size_t i = 0;
  // \Q...\E cannot contain "\E": split around it.
  while (i < literal.size()) {
    const size_t e = literal.find("\\E", i);
    if (e == std::string_view::npos) {
      out.append(literal.substr(i));
      break;
    }
    out.append(literal.substr(i, e - i + 1));
    out += "\\E\\E\\Q";
    i = e + 2;
  }
  return out + "\\E";
}

Regex::Regex(const std::string& pattern, const std::string& file, const std::string& path)
    : pattern_(pattern) {
  const std::string translated = onig_to_pcre2(pattern);
  int err = 0;
  PCRE2_SIZE off = 0;
  auto* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                             PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &err, &off, nullptr);
  if (!code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof(msg));
    fail(file, path,
         "invalid regex " + pattern + ": " + reinterpret_cast<const char*>(msg) + " at offset " +
             std::to_string(off),
         "fix the pattern (PCRE2 syntax with Unicode properties)");
  }
  code_ = code;
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

void Regex::find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const {
  auto& st = match_state();
  auto* code = static_cast<pcre2_code*>(code_);
  const auto* subj = reinterpret_cast<PCRE2_SPTR>(s.data());
  size_t pos = 0;
  while (pos <= s.size()) {
    int rc = jit_ ? pcre2_jit_match(code, subj, s.size(), pos, PCRE2_NO_UTF_CHECK, st.md, st.ctx)
                  : pcre2_match(code, subj, s.size(), pos, PCRE2_NO_UTF_CHECK, st.md, st.ctx);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof(msg));
      throw std::runtime_error("regex " + pattern_ + ": " + reinterpret_cast<const char*>(msg));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.md);
    const size_t b = ov[0], e = ov[1];
    out.emplace_back(b, e);
    if (e > b) {
      pos = e;
    } else {
      if (e >= s.size()) break;
      pos = e + uni::cp_len(static_cast<unsigned char>(s[e]));
    }
  }
}

}  // namespace ecdlm::text
