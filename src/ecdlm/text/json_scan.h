// A small, strict, allocation-light JSON scanner. tokenizer.json files are 2-11 MB, almost all
// of it the vocab and merges: those are read straight from the text (no DOM), and every other
// part is handed to nlohmann::json as its raw span. Errors are UserError with the file, the
// JSON path and the byte offset.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <string_view>

namespace ecdlm::text {

class JsonScanner {
 public:
  JsonScanner(std::string_view text, std::string file) : p_(text.data()), begin_(text.data()),
      end_(text.data() + text.size()), file_(std::move(file)) {}

  // Calls on_key(key, path_of_value) for each member; on_key must consume the value.
  template <class F>
  void object(const std::string& path, F&& on_key) {
    expect('{', path);
    ws();
    if (peek() == '}') { ++p_; return; }
    std::string key_buf;
    for (;;) {
      ws();
      if (peek() != '"') error(path, "expected a string key");
      const std::string_view key = string(path, key_buf);
      ws();
      expect(':', path);
      ws();
      const std::string key_copy(key);
      on_key(key_copy, path.empty() ? key_copy : path + "." + key_copy);
      ws();
      if (peek() == ',') { ++p_; continue; }
      expect('}', path);
      return;
    }
  }
  // Calls on_elem(index, path_of_element) for each element; on_elem must consume it.
  template <class F>
  void array(const std::string& path, F&& on_elem) {
    expect('[', path);
    ws();
    if (peek() == ']') { ++p_; return; }
    for (size_t i = 0;; ++i) {
      ws();
      on_elem(i, path + "[" + std::to_string(i) + "]");
      ws();
      if (peek() == ',') { ++p_; continue; }
      expect(']', path);
      return;
    }
  }
  // A string value, unescaped. The view points into the text or into `buf`.
  std::string_view string(const std::string& path, std::string& buf);
  int64_t integer(const std::string& path);
  bool is_null() { ws(); return peek() == 'n'; }
  char peek_char() { ws(); return peek(); }
  // Skips one value and returns its raw text.
  std::string_view skip_value(const std::string& path);
  // Parses one value with nlohmann (for the small parts of the file).
  nlohmann::json value(const std::string& path);
  void finish();  // only whitespace may follow

  [[noreturn]] void error(const std::string& path, const std::string& problem) const;

 private:
  char peek() const { return p_ < end_ ? *p_ : '\0'; }
  void ws() { while (p_ < end_ && (*p_ == ' ' || *p_ == '\n' || *p_ == '\r' || *p_ == '\t')) ++p_; }
  void expect(char c, const std::string& path);
  void skip_literal(const char* lit, const std::string& path);
  uint32_t hex4(const std::string& path);

  const char* p_;
  const char* begin_;
  const char* end_;
  std::string file_;
  int depth_ = 0;
};

}  // namespace ecdlm::text
