#include "ecdlm/text/hf_components.h"

#include "ecdlm/text/unicode.h"
#include "ecdlm/util/error.h"

namespace ecdlm::text::hf {

using nlohmann::json;

const char* const kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

void Src::fail(const std::string& problem, const std::string& fix) const {
  ::ecdlm::fail(file, path.empty() ? "(top level)" : path, problem,
                fix.empty() ? "see the Hugging Face tokenizers documentation for this field" : fix);
}

const json& field(const json& j, const char* key, const Src& src) {
  if (!j.is_object()) src.fail("expected a JSON object");
  auto it = j.find(key);
  if (it == j.end()) src.at(key).fail("required field is missing");
  return *it;
}

std::string get_string(const json& j, const char* key, const Src& src) {
  const json& v = field(j, key, src);
  if (!v.is_string()) src.at(key).fail("expected a string");
  return v.get<std::string>();
}

bool get_bool(const json& j, const char* key, bool dflt, const Src& src) {
  if (!j.is_object()) src.fail("expected a JSON object");
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return dflt;
  if (!it->is_boolean()) src.at(key).fail("expected true or false");
  return it->get<bool>();
}

int64_t get_int(const json& j, const char* key, const Src& src) {
  const json& v = field(j, key, src);
  if (!v.is_number_integer()) src.at(key).fail("expected an integer");
  return v.get<int64_t>();
}

std::string node_type(const json& j, const Src& src) { return get_string(j, "type", src); }

std::shared_ptr<Regex> make_pattern(const json& j, const Src& src) {
  if (!j.is_object() || j.size() != 1) src.fail("expected {\"String\": ...} or {\"Regex\": ...}");
  if (j.contains("String")) {
    const std::string lit = get_string(j, "String", src);
    if (lit.empty()) return nullptr;
    return std::make_shared<Regex>(regex_escape(lit), src.file, src.at("String").path);
  }
  if (j.contains("Regex")) return std::make_shared<Regex>(get_string(j, "Regex", src), src.file, src.at("Regex").path);
  src.fail("unknown pattern kind " + j.begin().key() + " (expected String or Regex)");
}

namespace {

// ---------------- Normalizers ----------------

struct NormFormN : Normalizer {
  uni::NormForm form;
  explicit NormFormN(uni::NormForm f) : form(f) {}
  void apply(std::string& s) const override { s = uni::normalize(s, form); }
};
struct LowercaseN : Normalizer {
  void apply(std::string& s) const override { s = uni::to_lower(s); }
};
struct StripAccentsN : Normalizer {
  void apply(std::string& s) const override { s = uni::strip_accents(s); }
};
struct StripN : Normalizer {
  bool left, right;
  StripN(bool l, bool r) : left(l), right(r) {}
  void apply(std::string& s) const override {
    if (right) s.resize(s.size() - uni::trailing_whitespace_bytes(s));
    if (left) s.erase(0, uni::leading_whitespace_bytes(s));
  }
};
struct PrependN : Normalizer {
  std::string prefix;
  void apply(std::string& s) const override {
    if (!s.empty()) s.insert(0, prefix);
  }
};
struct ReplaceN : Normalizer {
  std::shared_ptr<Regex> re;
  std::string content;
  void apply(std::string& s) const override {
    if (!re) return;
    std::vector<std::pair<size_t, size_t>> m;
    re->find_all(s, m);
    if (m.empty()) return;
    std::string out;
    size_t prev = 0;
    for (auto [b, e] : m) {
      if (e == b) continue;
      out.append(s, prev, b - prev);
      out += content;
      prev = e;
    }
    out.append(s, prev, std::string::npos);
    s.swap(out);
  }
};
struct SequenceN : Normalizer {
  std::vector<std::unique_ptr<Normalizer>> parts;
  void apply(std::string& s) const override {
    for (const auto& p : parts) p->apply(s);
  }
};

// ---------------- Pre-tokenizers ----------------

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct Seg {
  size_t b, e;
  bool flag;  // is-match before the behavior; "remove" after it
};

// Splits `s` at the regex matches with HF's SplitDelimiterBehavior and appends the pieces.
void split_pieces(std::string_view s, const Regex* re, Behavior beh, bool invert, Pieces& p,
                  std::vector<std::string_view>& out) {
  thread_local std::vector<Seg> segs, res;
  segs.clear();
  res.clear();
  p.matches.clear();
  if (re) re->find_all(s, p.matches);
  size_t prev = 0;
  for (auto [b, e] : p.matches) {
    if (prev != b) segs.push_back({prev, b, false});
    segs.push_back({b, e, true});
    prev = e;
  }
  if (prev != s.size() || segs.empty()) segs.push_back({prev, s.size(), false});
  if (invert)
    for (auto& g : segs) g.flag = !g.flag;
  switch (beh) {
    case Behavior::kIsolated:
      for (auto g : segs) res.push_back({g.b, g.e, false});
      break;
    case Behavior::kRemoved:
      res = segs;
      break;
    case Behavior::kMergedWithPrevious: {
      bool prev_match = false;
      for (auto g : segs) {
        if (g.flag && !prev_match && !res.empty()) res.back().e = g.e;
        else res.push_back({g.b, g.e, false});
        prev_match = g.flag;
      }
      break;
    }
    case Behavior::kMergedWithNext: {
      bool prev_match = false;
      for (size_t k = segs.size(); k-- > 0;) {
        const Seg g = segs[k];
        if (g.flag && !prev_match && !res.empty()) res.back().b = g.b;
        else res.push_back({g.b, g.e, false});
        prev_match = g.flag;
      }
      std::reverse(res.begin(), res.end());
      break;
    }
    case Behavior::kContiguous: {
      bool prev_match = false;
      for (auto g : segs) {
        if (g.flag == prev_match && !res.empty()) res.back().e = g.e;
        else res.push_back({g.b, g.e, false});
        prev_match = g.flag;
      }
      break;
    }
  }
  for (const auto& g : res)
    if (!g.flag && g.e > g.b) out.push_back(s.substr(g.b, g.e - g.b));
}

struct SplitP : PreTokenizer {
  std::shared_ptr<Regex> re;
  Behavior beh = Behavior::kIsolated;
  bool invert = false;
  void apply(Pieces& p) const override {
    p.scratch.clear();
    for (std::string_view s : p.v) split_pieces(s, re.get(), beh, invert, p, p.scratch);
    p.v.swap(p.scratch);
  }
};

struct ByteLevelP : PreTokenizer {
  bool add_prefix_space = false;
  std::shared_ptr<Regex> re;  // GPT-2 pattern if use_regex
  bool map_bytes = true;      // false when the model does the mapping (last stage)
  void apply(Pieces& p) const override {
    if (add_prefix_space)
      for (auto& s : p.v)
        if (s.empty() || s[0] != ' ') {
          p.owned.push_back(" ");
          p.owned.back().append(s);
          s = p.owned.back();
        }
    if (re) {
      p.scratch.clear();
      for (std::string_view s : p.v) split_pieces(s, re.get(), Behavior::kIsolated, false, p, p.scratch);
      p.v.swap(p.scratch);
    }
    if (map_bytes)
      for (auto& s : p.v) {
        p.owned.emplace_back();
        uni::byte_level_encode(s, p.owned.back());
        s = p.owned.back();
      }
  }
};

Behavior parse_behavior(const json& j, const Src& src) {
  const std::string b = get_string(j, "behavior", src);
  if (b == "Removed") return Behavior::kRemoved;
  if (b == "Isolated") return Behavior::kIsolated;
  if (b == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::kMergedWithNext;
  if (b == "Contiguous") return Behavior::kContiguous;
  src.at("behavior").fail("unknown split behavior " + b,
                          "use Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous");
}

// ---------------- Post-processors ----------------

struct NoopPost : PostProcessor {
  void apply(std::vector<int32_t>&, bool) const override {}
};
struct TemplatePost : PostProcessor {
  // Each item: the ids of a special token, or empty with is_seq = true for the sequence.
  struct Item {
    bool is_seq = false;
    std::vector<int32_t> ids;
  };
  std::vector<Item> single;
  void apply(std::vector<int32_t>& ids, bool add_special) const override {
    if (!add_special) return;
    std::vector<int32_t> out;
    out.reserve(ids.size() + 4);
    for (const auto& it : single) {
      if (it.is_seq) out.insert(out.end(), ids.begin(), ids.end());
      else out.insert(out.end(), it.ids.begin(), it.ids.end());
    }
    ids.swap(out);
  }
};
struct SequencePost : PostProcessor {
  std::vector<std::unique_ptr<PostProcessor>> parts;
  void apply(std::vector<int32_t>& ids, bool add_special) const override {
    for (const auto& p : parts) p->apply(ids, add_special);
  }
};

// ---------------- Decoders ----------------

struct ByteLevelD : Decoder {
  void decode_chain(std::vector<std::string>& toks) const override {
    std::string bytes;
    for (const auto& t : toks)
      if (!uni::byte_level_decode(t, bytes)) bytes += t;
    toks.assign(1, uni::from_utf8_lossy(bytes));
  }
};
struct ReplaceD : Decoder {
  ReplaceN rep;
  void decode_chain(std::vector<std::string>& toks) const override {
    for (auto& t : toks) rep.apply(t);
  }
};
struct StripD : Decoder {
  std::string content;  // one character
  size_t start = 0, stop = 0;
  void decode_chain(std::vector<std::string>& toks) const override {
    for (auto& t : toks) {
      size_t b = 0, e = t.size();
      for (size_t k = 0; k < start && e - b >= content.size() && t.compare(b, content.size(), content) == 0; ++k)
        b += content.size();
      for (size_t k = 0; k < stop && e - b >= content.size() &&
                         t.compare(e - content.size(), content.size(), content) == 0;
           ++k)
        e -= content.size();
      t = t.substr(b, e - b);
    }
  }
};
struct ByteFallbackD : Decoder {
  void decode_chain(std::vector<std::string>& toks) const override {
    std::vector<std::string> out;
    std::string bytes;
    size_t nbytes = 0;
    auto flush = [&] {
      if (nbytes == 0) return;
      if (uni::is_valid_utf8(bytes)) out.push_back(bytes);
      else
        for (size_t k = 0; k < nbytes; ++k) out.push_back("\xEF\xBF\xBD");
      bytes.clear();
      nbytes = 0;
    };
    for (auto& t : toks) {
      int v = -1;
      if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>') {
        auto hex = [](char c) {
          return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        };
        const int h = hex(t[3]), l = hex(t[4]);
        if (h >= 0 && l >= 0) v = h * 16 + l;
      }
      if (v >= 0) {
        bytes.push_back(static_cast<char>(v));
        ++nbytes;
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    toks.swap(out);
  }
};
struct FuseD : Decoder {
  void decode_chain(std::vector<std::string>& toks) const override {
    std::string all;
    for (const auto& t : toks) all += t;
    toks.assign(1, all);
  }
};
struct SequenceD : Decoder {
  std::vector<std::unique_ptr<Decoder>> parts;
  void decode_chain(std::vector<std::string>& toks) const override {
    for (const auto& p : parts) p->decode_chain(toks);
  }
};

const json& list_field(const json& j, const char* key, const Src& src) {
  const json& l = field(j, key, src);
  if (!l.is_array()) src.at(key).fail("expected an array");
  return l;
}

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const json& j, const Src& src) {
  if (j.is_null()) return nullptr;
  const std::string t = node_type(j, src);
  if (t == "NFC") return std::make_unique<NormFormN>(uni::NormForm::kNFC);
  if (t == "NFD") return std::make_unique<NormFormN>(uni::NormForm::kNFD);
  if (t == "NFKC") return std::make_unique<NormFormN>(uni::NormForm::kNFKC);
  if (t == "NFKD") return std::make_unique<NormFormN>(uni::NormForm::kNFKD);
  if (t == "Lowercase") return std::make_unique<LowercaseN>();
  if (t == "StripAccents") return std::make_unique<StripAccentsN>();
  if (t == "Strip")
    return std::make_unique<StripN>(get_bool(j, "strip_left", false, src), get_bool(j, "strip_right", false, src));
  if (t == "Prepend") {
    auto n = std::make_unique<PrependN>();
    n->prefix = get_string(j, "prepend", src);
    return n;
  }
  if (t == "Replace") {
    auto n = std::make_unique<ReplaceN>();
    n->re = make_pattern(field(j, "pattern", src), src.at("pattern"));
    n->content = get_string(j, "content", src);
    return n;
  }
  if (t == "Sequence") {
    auto n = std::make_unique<SequenceN>();
    const json& l = list_field(j, "normalizers", src);
    for (size_t i = 0; i < l.size(); ++i) {
      auto part = make_normalizer(l[i], src.at("normalizers").at(i));
      if (part) n->parts.push_back(std::move(part));
    }
    return n;
  }
  src.at("type").fail("unsupported normalizer type " + t,
                      "supported: NFC, NFD, NFKC, NFKD, Lowercase, StripAccents, Strip, Prepend, Replace, Sequence");
}

void make_pre_tokenizers(const json& j, const Src& src, std::vector<std::unique_ptr<PreTokenizer>>& out,
                         bool& byte_mode) {
  if (j.is_null()) return;
  const std::string t = node_type(j, src);
  byte_mode = false;
  if (t == "Sequence") {
    const json& l = list_field(j, "pretokenizers", src);
    for (size_t i = 0; i < l.size(); ++i) make_pre_tokenizers(l[i], src.at("pretokenizers").at(i), out, byte_mode);
    return;
  }
  // Any stage after a ByteLevel one sees mapped text: the earlier ByteLevel must map.
  if (!out.empty())
    if (auto* bl = dynamic_cast<ByteLevelP*>(out.back().get())) bl->map_bytes = true;
  if (t == "ByteLevel") {
    auto p = std::make_unique<ByteLevelP>();
    p->add_prefix_space = get_bool(j, "add_prefix_space", true, src);
    if (get_bool(j, "use_regex", true, src)) p->re = std::make_shared<Regex>(kGpt2Pattern, src.file, src.path);
    p->map_bytes = false;
    byte_mode = true;
    out.push_back(std::move(p));
    return;
  }
  if (t == "Split") {
    auto p = std::make_unique<SplitP>();
    p->re = make_pattern(field(j, "pattern", src), src.at("pattern"));
    p->beh = parse_behavior(j, src);
    p->invert = get_bool(j, "invert", false, src);
    out.push_back(std::move(p));
    return;
  }
  if (t == "Digits") {
    auto p = std::make_unique<SplitP>();
    p->re = std::make_shared<Regex>("\\p{N}", src.file, src.path);
    p->beh = get_bool(j, "individual_digits", false, src) ? Behavior::kIsolated : Behavior::kContiguous;
    out.push_back(std::move(p));
    return;
  }
  src.at("type").fail("unsupported pre_tokenizer type " + t, "supported: ByteLevel, Split, Digits, Sequence");
}

std::unique_ptr<PostProcessor> make_post_processor(const json& j, const Src& src) {
  if (j.is_null()) return nullptr;
  const std::string t = node_type(j, src);
  if (t == "ByteLevel") return std::make_unique<NoopPost>();
  if (t == "Sequence") {
    auto p = std::make_unique<SequencePost>();
    const json& l = list_field(j, "processors", src);
    for (size_t i = 0; i < l.size(); ++i) {
      auto part = make_post_processor(l[i], src.at("processors").at(i));
      if (part) p->parts.push_back(std::move(part));
    }
    return p;
  }
  if (t == "RobertaProcessing" || t == "BertProcessing") {
    auto p = std::make_unique<TemplatePost>();
    auto special = [&](const char* key) {
      const json& v = field(j, key, src);
      if (!v.is_array() || v.size() != 2 || !v[1].is_number_integer())
        src.at(key).fail("expected [token, id]");
      TemplatePost::Item it;
      it.ids.push_back(v[1].get<int32_t>());
      return it;
    };
    p->single.push_back(special("cls"));
    p->single.push_back(TemplatePost::Item{true, {}});
    p->single.push_back(special("sep"));
    return p;
  }
  if (t == "TemplateProcessing") {
    auto p = std::make_unique<TemplatePost>();
    const json& specials = field(j, "special_tokens", src);
    if (!specials.is_object()) src.at("special_tokens").fail("expected an object");
    const json& single = list_field(j, "single", src);
    for (size_t i = 0; i < single.size(); ++i) {
      const Src s = src.at("single").at(i);
      const json& piece = single[i];
      if (!piece.is_object() || piece.size() != 1) s.fail("expected {\"SpecialToken\": ...} or {\"Sequence\": ...}");
      if (piece.contains("Sequence")) {
        p->single.push_back(TemplatePost::Item{true, {}});
      } else if (piece.contains("SpecialToken")) {
        const std::string name = get_string(piece["SpecialToken"], "id", s.at("SpecialToken"));
        auto it = specials.find(name);
        if (it == specials.end())
          s.fail("special token " + name + " is not in special_tokens", "add it to post_processor.special_tokens");
        const Src ss = src.at("special_tokens").at(name);
        const json& ids = field(*it, "ids", ss);
        if (!ids.is_array()) ss.at("ids").fail("expected an array of ids");
        TemplatePost::Item item;
        for (const auto& id : ids) {
          if (!id.is_number_integer()) ss.at("ids").fail("expected integer ids");
          item.ids.push_back(id.get<int32_t>());
        }
        p->single.push_back(std::move(item));
      } else {
        s.fail("unknown template piece " + piece.begin().key());
      }
    }
    return p;
  }
  src.at("type").fail("unsupported post_processor type " + t,
                      "supported: ByteLevel, TemplateProcessing, RobertaProcessing, BertProcessing, Sequence");
}

std::unique_ptr<Decoder> make_decoder(const json& j, const Src& src) {
  if (j.is_null()) return nullptr;
  const std::string t = node_type(j, src);
  if (t == "ByteLevel") return std::make_unique<ByteLevelD>();
  if (t == "ByteFallback") return std::make_unique<ByteFallbackD>();
  if (t == "Fuse") return std::make_unique<FuseD>();
  if (t == "Replace") {
    auto d = std::make_unique<ReplaceD>();
    d->rep.re = make_pattern(field(j, "pattern", src), src.at("pattern"));
    d->rep.content = get_string(j, "content", src);
    return d;
  }
  if (t == "Strip") {
    auto d = std::make_unique<StripD>();
    d->content = get_string(j, "content", src);
    size_t i = 0;
    if (d->content.empty() || !uni::is_valid_utf8(d->content) || (uni::next_cp(d->content, i), i != d->content.size()))
      src.at("content").fail("expected a single character");
    const int64_t a = get_int(j, "start", src), b = get_int(j, "stop", src);
    if (a < 0 || b < 0) src.fail("start and stop must be >= 0");
    d->start = static_cast<size_t>(a);
    d->stop = static_cast<size_t>(b);
    return d;
  }
  if (t == "Sequence") {
    auto d = std::make_unique<SequenceD>();
    const json& l = list_field(j, "decoders", src);
    for (size_t i = 0; i < l.size(); ++i) {
      auto part = make_decoder(l[i], src.at("decoders").at(i));
      if (part) d->parts.push_back(std::move(part));
    }
    return d;
  }
  src.at("type").fail("unsupported decoder type " + t,
                      "supported: ByteLevel, ByteFallback, Fuse, Replace, Strip, Sequence");
}

}  // namespace ecdlm::text::hf
