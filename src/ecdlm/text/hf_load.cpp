// Loading tokenizer.json / vocab.json + merges.txt into an HfTokenizer.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "ecdlm/text/hf_tokenizer.h"
#include "ecdlm/text/json_scan.h"
#include "ecdlm/text/unicode.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/log.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace ecdlm::text {
namespace {

constexpr int64_t kMaxId = 1 << 24;
const char* kFixJson = "check that the file is a valid Hugging Face tokenizer.json";

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "", "cannot read tokenizer file", "check that it exists and is readable");
  std::string s;
  in.seekg(0, std::ios::end);
  const auto n = in.tellg();
  in.seekg(0);
  if (n > 0) s.resize(static_cast<size_t>(n));
  in.read(s.data(), static_cast<std::streamsize>(s.size()));
  if (!in) fail(path, "", "cannot read tokenizer file", "check that it is readable");
  return s;
}

// Merges are resolved after the model object: the vocab may come later in the file.
struct PendingMerges {
  std::string arena;
  std::vector<uint32_t> offs;  // a_off, a_len, b_off, b_len per merge
  void add(std::string_view a, std::string_view b) {
    offs.push_back(static_cast<uint32_t>(arena.size()));
    offs.push_back(static_cast<uint32_t>(a.size()));
    arena.append(a);
    offs.push_back(static_cast<uint32_t>(arena.size()));
    offs.push_back(static_cast<uint32_t>(b.size()));
    arena.append(b);
  }
  size_t size() const { return offs.size() / 4; }
};

void resolve_merges(BpeModel& m, const PendingMerges& pm, const std::string& file, const std::string& path) {
  for (size_t i = 0; i < pm.size(); ++i) {
    const std::string_view a(pm.arena.data() + pm.offs[4 * i], pm.offs[4 * i + 1]);
    const std::string_view b(pm.arena.data() + pm.offs[4 * i + 2], pm.offs[4 * i + 3]);
    const std::string missing = m.add_merge(a, b);
    if (!missing.empty())
      fail(file, path + "[" + std::to_string(i) + "]", "merge token '" + missing + "' is not in the vocab", kFixJson);
  }
}

std::optional<std::string> opt_string(const json& j, const hf::Src& src) {
  if (j.is_null()) return std::nullopt;
  if (!j.is_string()) src.fail("expected a string or null");
  return j.get<std::string>();
}

bool as_bool(const json& j, const hf::Src& src) {
  if (j.is_null()) return false;
  if (!j.is_boolean()) src.fail("expected true or false");
  return j.get<bool>();
}

std::vector<AddedToken> parse_added_tokens(const json& j, const hf::Src& src) {
  std::vector<AddedToken> out;
  if (j.is_null()) return out;
  if (!j.is_array()) src.fail("expected an array");
  for (size_t i = 0; i < j.size(); ++i) {
    const hf::Src s = src.at(i);
    AddedToken t;
    t.content = hf::get_string(j[i], "content", s);
    const int64_t id = hf::get_int(j[i], "id", s);
    if (id < 0 || id >= kMaxId) s.at("id").fail("id out of range [0, 2^24)");
    t.id = static_cast<int32_t>(id);
    t.special = hf::get_bool(j[i], "special", false, s);
    t.single_word = hf::get_bool(j[i], "single_word", false, s);
    t.lstrip = hf::get_bool(j[i], "lstrip", false, s);
    t.rstrip = hf::get_bool(j[i], "rstrip", false, s);
    t.normalized = hf::get_bool(j[i], "normalized", !t.special, s);
    if (!t.content.empty()) out.push_back(std::move(t));
  }
  return out;
}

// The ids the Rust library gives added tokens when it loads a file: it re-adds them in order,
// and the "id" fields are only checked. A token already in the model vocab keeps that id; a new
// one gets the model's vocab size, or one past the largest added id once that is beyond it.
// Tokens repeated with the same content keep the first id (the later entry's flags win).
std::vector<AddedToken> assign_added_ids(std::vector<AddedToken> in, const BpeModel& m, const std::string& file) {
  std::vector<AddedToken> out;
  const int64_t v = static_cast<int64_t>(m.num_tokens());
  int64_t max_id = -1;
  for (auto& t : in) {
    auto same = std::find_if(out.begin(), out.end(), [&](const AddedToken& o) { return o.content == t.content; });
    int64_t id;
    if (same != out.end()) id = same->id;
    else if (m.token_to_id(t.content) >= 0) id = m.token_to_id(t.content);
    else if (max_id < 0) id = v;
    else id = (max_id >= v || v == 0) ? max_id + 1 : v;
    if (id != t.id)
      LOG_DEBUG(file << ": added token " << t.content << " gets id " << id << " (the file says " << t.id
                     << "), as in the Rust tokenizers library");
    if (id >= kMaxId) fail(file, "added_tokens", "too many added tokens", kFixJson);
    t.id = static_cast<int32_t>(id);
    max_id = std::max(max_id, id);
    if (same != out.end()) *same = t;
    else out.push_back(t);
  }
  return out;
}

// Reads a JSON object of token -> id into the model.
void read_vocab(JsonScanner& sc, BpeModel& m, const std::string& path) {
  std::string buf;
  sc.object(path, [&](const std::string& key, const std::string& sub) {
    const int64_t id = sc.integer(sub);
    if (id < 0 || id >= kMaxId) sc.error(sub, "token id out of range [0, 2^24)");
    m.add_token(key, static_cast<int32_t>(id));
  });
}

void read_merges(JsonScanner& sc, PendingMerges& pm, const std::string& path) {
  std::string b1, b2;
  sc.array(path, [&](size_t, const std::string& sub) {
    if (sc.peek_char() == '"') {  // "a b": split at the first space
      const std::string_view s = sc.string(sub, b1);
      const size_t sp = s.find(' ');
      if (sp == std::string_view::npos) sc.error(sub, "a merge string must be two tokens separated by a space");
      pm.add(s.substr(0, sp), s.substr(sp + 1));
    } else if (sc.peek_char() == '[') {  // ["a", "b"]
      std::string a, b;
      size_t n = 0;
      sc.array(sub, [&](size_t k, const std::string& el) {
        const std::string_view v = sc.string(el, b2);
        if (k == 0) a.assign(v);
        else b.assign(v);
        ++n;
      });
      if (n != 2) sc.error(sub, "a merge pair must have exactly two tokens");
      pm.add(a, b);
    } else {
      sc.error(sub, "expected a merge (\"a b\" or [\"a\", \"b\"])");
    }
  });
}

}  // namespace

std::unique_ptr<HfTokenizer> HfTokenizer::load_json(const std::string& path) {
  return load_json_text(slurp(path), path, fs::path(path).parent_path().string());
}

std::unique_ptr<HfTokenizer> HfTokenizer::load_json_text(std::string_view text, const std::string& path,
                                                         const std::string& config_dir) {
  JsonScanner sc(text, path);
  const hf::Src root{path, ""};
  BpeModel::Options opt;
  PendingMerges pm;
  bool have_model = false, have_vocab = false;
  std::string model_type;
  json normalizer, pre, post, decoder, added;
  // The vocab is read after the whole file: the model options (prefix etc.) may follow it.
  std::string vocab_raw_path;
  std::string_view vocab_raw;
  sc.object("", [&](const std::string& key, const std::string& kpath) {
    if (key == "normalizer") normalizer = sc.value(kpath);
    else if (key == "pre_tokenizer") pre = sc.value(kpath);
    else if (key == "post_processor") post = sc.value(kpath);
    else if (key == "decoder") decoder = sc.value(kpath);
    else if (key == "added_tokens") added = sc.value(kpath);
    else if (key == "truncation") {
      if (!sc.value(kpath).is_null())
        fail(path, kpath, "truncation is not supported", "set \"truncation\": null");
    } else if (key == "padding") {
      if (!sc.value(kpath).is_null()) LOG_WARN(path << ": padding settings are ignored (they apply to batches)");
    } else if (key == "model") {
      have_model = true;
      sc.object(kpath, [&](const std::string& mk, const std::string& mpath) {
        const hf::Src ms{path, mpath};
        if (mk == "vocab") {
          if (sc.peek_char() != '{') sc.error(mpath, "expected an object of token -> id");
          vocab_raw = sc.skip_value(mpath);  // read once the options are known
          vocab_raw_path = mpath;
          have_vocab = true;
        } else if (mk == "merges") {
          read_merges(sc, pm, mpath);
        } else if (mk == "type") {
          const json t = sc.value(mpath);
          if (!t.is_string()) ms.fail("expected a string");
          model_type = t.get<std::string>();
        } else if (mk == "unk_token") opt.unk_token = opt_string(sc.value(mpath), ms);
        else if (mk == "continuing_subword_prefix") opt.continuing_subword_prefix = opt_string(sc.value(mpath), ms);
        else if (mk == "end_of_word_suffix") opt.end_of_word_suffix = opt_string(sc.value(mpath), ms);
        else if (mk == "fuse_unk") opt.fuse_unk = as_bool(sc.value(mpath), ms);
        else if (mk == "byte_fallback") opt.byte_fallback = as_bool(sc.value(mpath), ms);
        else if (mk == "ignore_merges") opt.ignore_merges = as_bool(sc.value(mpath), ms);
        else if (mk == "dropout") {
          const json d = sc.value(mpath);
          if (!d.is_null() && !(d.is_number() && d.get<double>() == 0.0))
            ms.fail("BPE dropout is not supported (encoding would be random)", "set \"dropout\": null");
        } else {
          sc.skip_value(mpath);
        }
      });
    } else {
      sc.skip_value(kpath);
    }
  });
  sc.finish();
  if (!have_model) root.at("model").fail("required field is missing", kFixJson);
  if (model_type.empty() && !have_vocab) root.at("model.type").fail("required field is missing", kFixJson);
  if (!model_type.empty() && model_type != "BPE")
    root.at("model.type").fail("unsupported model type " + model_type, "only BPE tokenizers are supported");
  if (!have_vocab) root.at("model.vocab").fail("required field is missing", kFixJson);
  // Empty "" prefix/suffix behave like none.
  if (opt.continuing_subword_prefix && opt.continuing_subword_prefix->empty()) opt.continuing_subword_prefix.reset();
  if (opt.end_of_word_suffix && opt.end_of_word_suffix->empty()) opt.end_of_word_suffix.reset();

  std::unique_ptr<HfTokenizer> tok(new HfTokenizer(opt));
  tok->path_ = path;
  BpeModel& m = tok->model_;
  m.reserve(vocab_raw.size() / 12 + 16, pm.size());
  JsonScanner vs(vocab_raw, path);
  read_vocab(vs, m, vocab_raw_path);
  resolve_merges(m, pm, path, "model.merges");
  if (auto unk = m.finish()) root.at("model.unk_token").fail("unk token '" + *unk + "' is not in the vocab", kFixJson);

  tok->normalizer_ = hf::make_normalizer(normalizer, root.at("normalizer"));
  hf::make_pre_tokenizers(pre, root.at("pre_tokenizer"), tok->pre_, tok->byte_mode_);
  tok->post_ = hf::make_post_processor(post, root.at("post_processor"));
  tok->decoder_ = hf::make_decoder(decoder, root.at("decoder"));
  tok->added_ = assign_added_ids(parse_added_tokens(added, root.at("added_tokens")), m, path);
  tok->finish(config_dir);
  return tok;
}

std::unique_ptr<HfTokenizer> HfTokenizer::load_vocab_merges(const std::string& vocab_json, const std::string& merges_txt) {
  std::unique_ptr<HfTokenizer> tok(new HfTokenizer(BpeModel::Options{}));
  tok->path_ = vocab_json;
  BpeModel& m = tok->model_;
  const std::string vtext = slurp(vocab_json);
  {
    JsonScanner sc(vtext, vocab_json);
    m.reserve(vtext.size() / 12 + 16, 0);
    read_vocab(sc, m, "");
    sc.finish();
  }
  PendingMerges pm;
  {
    std::istringstream in(slurp(merges_txt));
    std::string line;
    size_t lineno = 0;
    while (std::getline(in, line)) {
      ++lineno;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.rfind("#version", 0) == 0 || line.empty()) continue;
      const size_t sp = line.find(' ');
      if (sp == std::string::npos || line.find(' ', sp + 1) != std::string::npos)
        fail(merges_txt, "line " + std::to_string(lineno), "expected two tokens separated by one space",
             "check that this is a BPE merges.txt");
      if (!uni::is_valid_utf8(line)) fail(merges_txt, "line " + std::to_string(lineno), "invalid UTF-8");
      pm.add(std::string_view(line).substr(0, sp), std::string_view(line).substr(sp + 1));
    }
  }
  resolve_merges(m, pm, merges_txt, "merges");
  m.finish();
  const hf::Src none{vocab_json, ""};
  json bl = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  hf::make_pre_tokenizers(bl, none, tok->pre_, tok->byte_mode_);
  tok->decoder_ = hf::make_decoder(bl, none);
  // Specials: <|endoftext|> and the entries of added_tokens.json (content -> id).
  const fs::path dir = fs::path(vocab_json).parent_path();
  const int32_t eot = m.token_to_id("<|endoftext|>");
  if (eot >= 0) tok->added_.push_back(AddedToken{"<|endoftext|>", eot, true, false, false, false, false});
  const fs::path extra = dir / "added_tokens.json";
  std::error_code ec;
  if (fs::is_regular_file(extra, ec)) {
    const std::string etext = slurp(extra.string());
    JsonScanner sc(etext, extra.string());
    std::string buf;
    sc.object("", [&](const std::string& key, const std::string& sub) {
      const int64_t id = sc.integer(sub);
      if (id < 0 || id >= kMaxId) sc.error(sub, "token id out of range [0, 2^24)");
      if (!key.empty() && key != "<|endoftext|>")
        tok->added_.push_back(AddedToken{key, static_cast<int32_t>(id), true, false, false, false, false});
    });
    sc.finish();
  }
  tok->finish(dir.string());
  return tok;
}

void HfTokenizer::finish(const std::string& config_dir) {
  vocab_size_ = model_.max_id_plus_one();
  for (const auto& a : added_) vocab_size_ = std::max<int64_t>(vocab_size_, a.id + 1);
  added_index_.assign(static_cast<size_t>(vocab_size_), -1);
  for (size_t i = 0; i < added_.size(); ++i) added_index_[static_cast<size_t>(added_[i].id)] = static_cast<int32_t>(i);
  std::vector<const AddedToken*> raw, norm;
  std::vector<std::string> raw_p, norm_p;
  for (const auto& a : added_) {
    if (!a.normalized) {
      raw.push_back(&a);
      raw_p.push_back(a.content);
    } else {
      std::string c = a.content;
      if (normalizer_) normalizer_->apply(c);
      norm.push_back(&a);
      norm_p.push_back(c);
    }
  }
  raw_matcher_.build(raw, raw_p);
  norm_matcher_.build(norm, norm_p);
  resolve_special_ids(config_dir);
}

void HfTokenizer::resolve_special_ids(const std::string& dir) {
  auto read_opt = [](const fs::path& p) -> json {
    std::error_code ec;
    if (!fs::is_regular_file(p, ec)) return json();
    try {
      return json::parse(slurp(p.string()));
    } catch (const json::exception& e) {
      fail(p.string(), "", std::string("invalid JSON: ") + e.what(), "fix or remove the file");
    }
  };
  // An empty dir means "no config files" (not the current directory).
  const json cfg = dir.empty() ? json() : read_opt(fs::path(dir) / "config.json");
  const json tcfg = dir.empty() ? json() : read_opt(fs::path(dir) / "tokenizer_config.json");
  auto from_config = [&](const char* key) -> int32_t {
    if (!cfg.is_object() || !cfg.contains(key)) return -1;
    json v = cfg[key];
    if (v.is_array() && !v.empty()) v = v[0];
    if (!v.is_number_integer()) return -1;
    const int64_t id = v.get<int64_t>();
    return id >= 0 && id < vocab_size_ ? static_cast<int32_t>(id) : -1;
  };
  auto from_tcfg = [&](const char* key) -> int32_t {
    if (!tcfg.is_object() || !tcfg.contains(key)) return -1;
    json v = tcfg[key];
    if (v.is_object() && v.contains("content")) v = v["content"];
    return v.is_string() ? piece_to_id(v.get<std::string>()) : -1;
  };
  eos_id_ = from_config("eos_token_id");
  if (eos_id_ < 0) eos_id_ = from_tcfg("eos_token");
  if (eos_id_ < 0) eos_id_ = piece_to_id(kEosPiece);
  pad_id_ = from_config("pad_token_id");
  if (pad_id_ < 0) pad_id_ = from_tcfg("pad_token");
  if (pad_id_ < 0) pad_id_ = eos_id_;
  mask_id_ = from_config("mask_token_id");
  if (mask_id_ < 0) mask_id_ = piece_to_id(kMaskPiece);
}

}  // namespace ecdlm::text
