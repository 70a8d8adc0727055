// PCRE2 regexes with the semantics tokenizer.json expects (Oniguruma, as the Rust library uses):
// UTF + Unicode properties, JIT when available, and Oniguruma's \s / \w classes.
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ecdlm::text {

class Regex {
 public:
  // Compiles an Oniguruma-syntax pattern. A pattern PCRE2 rejects gives UserError naming
  // `file` and the JSON `path`.
  Regex(const std::string& pattern, const std::string& file, const std::string& path);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Appends the [begin, end) byte ranges of successive matches in `subject` (valid UTF-8;
  // the regex sees only this string). An empty match is reported and the search moves on by
  // one character.
  void find_all(std::string_view subject, std::vector<std::pair<size_t, size_t>>& out) const;

  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code_8
  bool jit_ = false;
};

// Oniguruma -> PCRE2: \s, \S, \w, \W become explicit classes with Oniguruma's members
// (PCRE2's UCP \s also matches U+180E; its \w lacks marks and Nl but has No). Exposed for tests.
std::string onig_to_pcre2(const std::string& pattern);
// Escapes a literal string for use inside a PCRE2 pattern.
std::string regex_escape(std::string_view literal);

}  // namespace ecdlm::text
