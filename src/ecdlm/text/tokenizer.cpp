#include "ecdlm/text/tokenizer.h"

#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <stdexcept>
#include <stdlib.h>
#include <unistd.h>

#include "ecdlm/text/hf_tokenizer.h"
#include "ecdlm/text/spm_api.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/fs.h"

namespace fs = std::filesystem;

namespace ecdlm::text {
namespace {

const char* kRetrainFix = "re-run ecdlm prepare-data (or pass a valid --tokenizer)";

void append_str(void* user, const char* p, int64_t n) {
  static_cast<std::string*>(user)->append(p, static_cast<size_t>(n));
}
void assign_ids(void* user, const int32_t* ids, int64_t n) {
  static_cast<std::vector<int32_t>*>(user)->assign(ids, ids + n);
}

std::string piece_of(const EcdlmSpm* sp, int32_t id) {
  std::string s;
  if (spm::api().id_to_piece(sp, id, append_str, &s) != 0) return {};
  return s;
}

// Returns the id of `piece` if the model really contains it (PieceToId maps unknowns to unk).
int32_t find_piece(const EcdlmSpm* sp, const char* piece) {
  const int32_t id = spm::api().piece_to_id(sp, piece);
  if (id < 0 || id >= spm::api().vocab_size(sp) || piece_of(sp, id) != piece) return -1;
  return id;
}

// Known tokenizer files, in lookup order for a model directory. New formats add a row here.
struct TokenizerFormat {
  const char* file_name;
  std::function<std::unique_ptr<Tokenizer>(const std::string&)> load;
};

const std::vector<TokenizerFormat>& formats() {
  static const std::vector<TokenizerFormat> f = {
      {"tokenizer.json", [](const std::string& p) -> std::unique_ptr<Tokenizer> {
         return HfTokenizer::load_json(p);
       }},
      {"vocab.json", [](const std::string& p) -> std::unique_ptr<Tokenizer> {
         const fs::path merges = fs::path(p).parent_path() / "merges.txt";
         std::error_code ec;
         if (!fs::is_regular_file(merges, ec))
           fail(p, "", "vocab.json needs a merges.txt beside it", "add merges.txt or use a tokenizer.json");
         return HfTokenizer::load_vocab_merges(p, merges.string());
       }},
      {"tokenizer.model", [](const std::string& p) -> std::unique_ptr<Tokenizer> {
         return SpmTokenizer::load(p);
       }},
  };
  return f;
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& model_dir_or_file) {
  std::error_code ec;
  if (fs::is_directory(model_dir_or_file, ec)) {
    std::string names;
    for (const auto& f : formats()) {
      const fs::path p = fs::path(model_dir_or_file) / f.file_name;
      if (fs::is_regular_file(p, ec)) return f.load(p.string());
      names += names.empty() ? f.file_name : std::string(", ") + f.file_name;
    }
    fail(model_dir_or_file, "", "no tokenizer file found (looked for " + names + ")",
         kRetrainFix);
  }
  if (!fs::exists(model_dir_or_file, ec))
    fail(model_dir_or_file, "", "tokenizer not found", kRetrainFix);
  const std::string name = fs::path(model_dir_or_file).filename().string();
  for (const auto& f : formats())
    if (name == f.file_name) return f.load(model_dir_or_file);
  // Any other *.json is taken as a tokenizer.json.
  if (name.size() > 5 && name.compare(name.size() - 5, 5, ".json") == 0)
    return HfTokenizer::load_json(model_dir_or_file);
  // Unknown name: SentencePiece is the only binary format, so let it judge the file.
  return SpmTokenizer::load(model_dir_or_file);
}

void SpmTokenizer::train(const std::vector<std::string>& texts, int vocab_size,
                         const std::string& out_model_path, uint64_t seed) {
  if (vocab_size < 300)
    fail(out_model_path, "vocab_size", "must be at least 300 (4 specials + 256 bytes + chars)",
         "raise --vocab-size");
  const auto& api = spm::api();
  api.set_seed(static_cast<uint32_t>(seed ^ (seed >> 32)));
  // SentencePiece takes its settings as one space-separated string with no quoting, so the
  // input and model files live in a private scratch dir whose path has no spaces; the model is
  // then copied to out_model_path atomically (which may contain anything).
  std::string scratch_tmpl = (fs::temp_directory_path() / "ecdlm-spm-XXXXXX").string();
  if (scratch_tmpl.find_first_of(" \t\n") != std::string::npos)
    fail(scratch_tmpl, "", "temp directory path contains whitespace", "set TMPDIR to a path without spaces");
  if (::mkdtemp(scratch_tmpl.data()) == nullptr)
    fail(scratch_tmpl, "", "cannot create scratch directory for tokenizer training", "check TMPDIR is writable");
  const fs::path scratch = scratch_tmpl;
  struct Cleanup {
    fs::path dir;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } cleanup{scratch};
  // One paragraph per line, in order.
  const std::string input = (scratch / "input.txt").string();
  size_t lines = 0;
  {
    std::ofstream in(input, std::ios::binary | std::ios::trunc);
    for (const auto& t : texts) {
      size_t pos = 0;
      while (pos < t.size()) {
        size_t end = t.find('\n', pos);
        if (end == std::string::npos) end = t.size();
        if (end > pos) {
          in.write(t.data() + pos, static_cast<std::streamsize>(end - pos));
          in.put('\n');
          ++lines;
        }
        pos = end + 1;
      }
    }
    if (!in) fail(input, "", "cannot write tokenizer training input", "free space in TMPDIR");
  }
  if (lines == 0) fail(out_model_path, "", "no training text (all documents empty)");
  const std::string prefix = (scratch / "spm").string();
  std::ostringstream args;
  args << "--input=" << input << " --model_prefix=" << prefix << " --model_type=bpe"
       << " --vocab_size=" << vocab_size << " --character_coverage=1.0 --byte_fallback=true"
       << " --normalization_rule_name=identity --num_threads=2"
       // Fixed ids: unk first, then the user-defined specials (matched in text as one token).
       << " --unk_id=0 --bos_id=-1 --eos_id=-1 --pad_id=-1"
       << " --user_defined_symbols=" << kEosPiece << "," << kMaskPiece << "," << kPadPiece
       // Use every line, in order: no sampling, so training is reproducible.
       << " --input_sentence_size=0 --shuffle_input_sentence=false"
       // Paragraphs can be long; the 4 KiB default silently drops them.
       << " --max_sentence_length=" << (1 << 20)
       // Quiet: SentencePiece logs to std::cerr at INFO by default.
       << " --minloglevel=3";
  char err[1024] = {0};
  if (api.train(args.str().c_str(), err, sizeof(err)) != 0)
    fail(out_model_path, "", std::string("sentencepiece training failed: ") + err,
         "check --vocab-size against the corpus size (a tiny corpus cannot fill a large vocab)");
  // Atomic: a crash never leaves a half-written model behind.
  write_file_atomic(out_model_path, read_text_file(prefix + ".model"));
}

std::unique_ptr<SpmTokenizer> SpmTokenizer::load(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) fail(path, "", "tokenizer model not found", kRetrainFix);
  if (!std::ifstream(path, std::ios::binary))
    fail(path, "", "cannot read tokenizer model", "check its permissions");
  std::unique_ptr<SpmTokenizer> tok(new SpmTokenizer());
  tok->path_ = path;
  char err[1024] = {0};
  const auto& api = spm::api();
  if (api.load(path.c_str(), &tok->sp_, err, sizeof(err)) != 0 || api.vocab_size(tok->sp_) <= 0)
    fail(path, "", std::string("not a valid SentencePiece model (") + err + ")", kRetrainFix);
  auto* sp = tok->sp_;
  tok->size_ = api.vocab_size(sp);
  tok->mask_id_ = find_piece(sp, kMaskPiece);
  if (tok->mask_id_ < 0)
    fail(path, kMaskPiece, "special token missing from the tokenizer", kRetrainFix);
  tok->eos_id_ = find_piece(sp, kEosPiece);
  if (tok->eos_id_ < 0)
    fail(path, kEosPiece, "no end-of-text token in the tokenizer", kRetrainFix);
  tok->pad_id_ = find_piece(sp, kPadPiece);
  if (tok->pad_id_ < 0) tok->pad_id_ = tok->eos_id_;
  return tok;
}

SpmTokenizer::~SpmTokenizer() {
  if (sp_) spm::api().free(sp_);
}

void SpmTokenizer::check_id(int32_t id) const {
  if (id < 0 || id >= size_)
    throw std::out_of_range("token id " + std::to_string(id) + " outside tokenizer vocab [0, " +
                            std::to_string(size_) + ")");
}

std::vector<int32_t> SpmTokenizer::encode(const std::string& text) const {
  std::vector<int32_t> ids;
  if (spm::api().encode(sp_, text.data(), static_cast<int64_t>(text.size()), assign_ids, &ids) != 0)
    throw std::runtime_error(path_ + ": encode failed");
  return ids;
}

std::string SpmTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::vector<int32_t> known;  // ids outside the vocabulary left out, as HfTokenizer::decode
  known.reserve(ids.size());
  for (int32_t id : ids)
    if (id >= 0 && id < size_) known.push_back(id);
  std::string out;
  if (spm::api().decode(sp_, known.data(), static_cast<int64_t>(known.size()), append_str, &out) != 0)
    throw std::runtime_error(path_ + ": decode failed");
  return out;
}

int64_t SpmTokenizer::vocab_size() const { return size_; }

int32_t SpmTokenizer::piece_to_id(const std::string& piece) const { return find_piece(sp_, piece.c_str()); }

std::string SpmTokenizer::id_to_piece(int32_t id) const {
  check_id(id);
  return piece_of(sp_, id);
}

bool has_token(const Tokenizer& tok, int64_t id) {
  if (id < 0 || id >= tok.vocab_size()) return false;
  try {
    (void)tok.id_to_piece(static_cast<int32_t>(id));
    return true;
  } catch (const std::out_of_range&) {  // a hole in the vocabulary
    return false;
  }
}

int64_t count_missing_ids(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  int64_t n = 0;
  for (int32_t id : ids) n += has_token(tok, id) ? 0 : 1;
  return n;
}

}  // namespace ecdlm::text
