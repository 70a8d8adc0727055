// `ecdlm tokenize`: encode JSONL text to ids (or decode ids to text) with a model's tokenizer.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "commands.h"
#include "ecdlm/text/tokenizer.h"
#include "ecdlm/text/unicode.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/fs.h"

namespace ecdlm::cli {
namespace {
using nlohmann::json;

struct TokenizeArgs {
  std::string model_dir, tokenizer, text, input, output;
  bool add_special_tokens = true, decode = false, show_tokens = false;
};

// The JSON library would only name its own internals ("type_error.316") for bad bytes.
void check_utf8(const std::string& s, const std::string& where, const std::string& fix) {
  const size_t valid = text::uni::valid_utf8_prefix(s);
  if (valid == s.size()) return;
  char byte[8];
  std::snprintf(byte, sizeof(byte), "0x%02X", static_cast<unsigned>(static_cast<unsigned char>(s[valid])));
  fail(where, "", "input is not valid UTF-8: byte " + std::string(byte) + " at byte offset " + std::to_string(valid),
       fix);
}

// One input record -> one output line. `where` names the input and line for errors.
std::string process(const text::Tokenizer& tok, const TokenizeArgs& a, const std::string& line,
                    const std::string& where) {
  check_utf8(line, where, "the input must be UTF-8 JSONL");
  json j;
  try {
    j = json::parse(line);
  } catch (const json::parse_error& e) {
    fail(where, "", std::string("invalid JSON: ") + e.what(), "each line must be one JSON object");
  }
  json out = json::object();
  if (a.decode) {
    if (!j.is_object() || !j.contains("ids") || !j["ids"].is_array())
      fail(where, "ids", "expected an object with an \"ids\" array", "write {\"ids\": [1, 2, 3]}");
    std::vector<int32_t> ids;
    ids.reserve(j["ids"].size());
    for (size_t i = 0; i < j["ids"].size(); ++i) {
      const json& v = j["ids"][i];
      const std::string f = "ids[" + std::to_string(i) + "]";
      if (!v.is_number_integer()) fail(where, f, "expected an integer token id");
      const int64_t id = v.get<int64_t>();
      if (!text::has_token(tok, id))
        fail(where, f, "token id " + std::to_string(id) + " is not in the vocabulary (size " +
                           std::to_string(tok.vocab_size()) + ")",
             "use ids produced by this tokenizer");
      ids.push_back(static_cast<int32_t>(id));
    }
    out["text"] = tok.decode(ids);
    if (a.show_tokens) {
      json toks = json::array();
      for (int32_t id : ids) toks.push_back(tok.id_to_piece(id));
      out["tokens"] = std::move(toks);
    }
  } else {
    if (!j.is_object() || !j.contains("text") || !j["text"].is_string())
      fail(where, "text", "expected an object with a \"text\" string", "write {\"text\": \"...\"}");
    const std::vector<int32_t> ids = tok.encode(j["text"].get<std::string>(), a.add_special_tokens);
    out["ids"] = ids;
    if (a.show_tokens) {
      json toks = json::array();
      for (int32_t id : ids) toks.push_back(tok.id_to_piece(id));
      out["tokens"] = std::move(toks);
    }
  }
  return out.dump(-1, ' ', false, json::error_handler_t::replace);
}

int run(const TokenizeArgs& a) {
  if (a.model_dir.empty() == a.tokenizer.empty())
    fail("", "-m/--tokenizer", "give exactly one of -m MODEL_DIR or --tokenizer FILE");
  if (!a.text.empty() && !a.input.empty()) fail("", "--text/--input", "give at most one of --text and --input");
  const auto tok = text::load_tokenizer(a.model_dir.empty() ? a.tokenizer : a.model_dir);
  std::ostringstream buf;
  std::ostream* os = &std::cout;
  if (!a.output.empty()) os = &buf;
  if (!a.text.empty()) {
    // --text: one record. In --decode mode it is a JSON array of ids.
    check_utf8(a.text, "--text", "pass UTF-8 text (convert it first, e.g. with iconv)");
    json rec = a.decode ? json{{"ids", json::parse(a.text, nullptr, false)}} : json{{"text", a.text}};
    if (a.decode && rec["ids"].is_discarded())
      fail("--text", "", "expected a JSON array of ids with --decode", "e.g. --text '[15496, 995]'");
    *os << process(*tok, a, rec.dump(), "--text") << "\n";
  } else {
    std::ifstream file;
    std::istream* in = &std::cin;
    const std::string name = a.input.empty() ? "<stdin>" : a.input;
    if (!a.input.empty()) {
      // An ifstream opens a directory and reads nothing: exit 0 with no output.
      if (std::filesystem::is_directory(a.input))
        fail(a.input, "", "is a directory, not a file", "pass a .jsonl file with --input");
      file.open(a.input, std::ios::binary);
      if (!file) fail(a.input, "", "cannot open input", "pass an existing .jsonl file with --input");
      in = &file;
    }
    std::string line;
    size_t lineno = 0;
    while (std::getline(*in, line)) {
      ++lineno;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.find_first_not_of(" \t") == std::string::npos) continue;  // blank lines are skipped
      *os << process(*tok, a, line, name + ":" + std::to_string(lineno)) << "\n";
    }
  }
  if (!a.output.empty()) write_file_atomic(a.output, buf.str());
  else std::cout.flush();
  return 0;
}

}  // namespace

void register_tokenize(CLI::App& app) {
  auto a = std::make_shared<TokenizeArgs>();
  auto* sub = app.add_subcommand("tokenize", "Encode JSONL text to token ids (or --decode ids to text)");
  auto* m = sub->add_option("-m,--model", a->model_dir, "Model directory (tokenizer.json, vocab.json+merges.txt or tokenizer.model)");
  auto* t = sub->add_option("--tokenizer", a->tokenizer, "Tokenizer file instead of a model directory");
  m->excludes(t);
  auto* tx = sub->add_option("--text", a->text,
                             "Encode this one string (with --decode: a JSON array of ids); default: read --input, or stdin");
  auto* in = sub->add_option("--input", a->input, "Input JSONL: {\"text\": ...} per line ({\"ids\": [...]} with --decode)");
  tx->excludes(in);
  sub->add_option("--output", a->output, "Output JSONL (default: stdout)");
  auto* add_special = sub->add_option("--add-special-tokens", a->add_special_tokens,
                                      "Add the post-processor's special tokens (BOS/EOS), as HF encode(add_special_tokens=)")
                          ->capture_default_str();
  sub->add_flag("--decode", a->decode, "Decode {\"ids\": [...]} lines to {\"text\": ...} (special tokens kept)")
      ->excludes(add_special);
  sub->add_flag("--show-tokens", a->show_tokens, "Also write the token strings as \"tokens\"");
  set_runner(sub, [a]() { return run(*a); });
}

}  // namespace ecdlm::cli
