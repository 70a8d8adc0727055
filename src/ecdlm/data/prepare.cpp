#include "ecdlm/data/prepare.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <exception>
#include <mutex>
#include <thread>

#include "ecdlm/data/corpus.h"
#include "ecdlm/data/shards.h"
#include "ecdlm/text/tokenizer.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/strings.h"
#include "ecdlm/util/fs.h"
#include "ecdlm/util/log.h"

namespace fs = std::filesystem;

namespace ecdlm::data {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : " ") + x;
  return s;
}

std::vector<Document> read_source(const PrepareParams& p) {
  if (p.source == "brown") {
    if (p.inputs.size() > 1)
      fail("--input", "", "the brown source takes one directory, got " +
                              std::to_string(p.inputs.size()) + " inputs");
    return read_brown(p.inputs.empty() ? default_brown_dir() : p.inputs[0]);
  }
  if (p.inputs.empty())
    fail("--input", "", "source '" + p.source + "' needs at least one input path",
         "pass --input FILE_OR_DIR");
  if (p.source == "text") return read_text_files(p.inputs);
  std::vector<Document> docs;
  for (const auto& path : p.inputs) {
    auto part = read_jsonl(path);
    docs.insert(docs.end(), std::make_move_iterator(part.begin()),
                std::make_move_iterator(part.end()));
  }
  return docs;
}

// Encodes documents in parallel (SentencePiece encoding is const and thread-safe), then joins
// them in input order, each followed by eos.
std::vector<int32_t> encode_documents(const text::Tokenizer& tok,
                                      const std::vector<Document>& docs) {
  std::vector<std::vector<int32_t>> parts(docs.size());
  const size_t n_threads =
      std::max<size_t>(1, std::min<size_t>(std::thread::hardware_concurrency(), docs.size()));
  std::vector<std::thread> pool;
  std::exception_ptr error;
  std::mutex error_mu;
  for (size_t t = 0; t < n_threads; ++t) {
    pool.emplace_back([&, t] {
      try {
        for (size_t i = t; i < docs.size(); i += n_threads) parts[i] = tok.encode(docs[i].text);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mu);
        if (!error) error = std::current_exception();
      }
    });
  }
  for (auto& th : pool) th.join();
  if (error) std::rethrow_exception(error);
  size_t total = 0;
  for (const auto& p : parts) total += p.size() + 1;
  std::vector<int32_t> ids;
  ids.reserve(total);
  for (const auto& p : parts) {
    ids.insert(ids.end(), p.begin(), p.end());
    ids.push_back(tok.eos_id());
  }
  return ids;
}

int64_t total_bytes(const std::vector<Document>& docs) {
  int64_t n = 0;
  for (const auto& d : docs) n += static_cast<int64_t>(d.text.size());
  return n;
}

}  // namespace

nlohmann::json prepare_data(const PrepareParams& p) {
  const auto t0 = Clock::now();
  if (p.source != "brown" && p.source != "text" && p.source != "jsonl")
    fail("--source", "", "unknown source '" + p.source + "'", "use brown, text or jsonl");
  if (p.out_dir.empty()) fail("--out", "", "output directory is empty", "pass --out DIR");
  if (!(p.val_fraction >= 0.0 && p.val_fraction < 1.0))
    fail("--val-fraction", "", "must be in [0, 1), got " + std::to_string(p.val_fraction));
  const bool train_tokenizer = p.tokenizer_path.empty();
  if (train_tokenizer && (p.vocab_size < 300 || p.vocab_size > (1 << 20)))
    fail("--vocab-size", "", "must be in [300, 1048576], got " + std::to_string(p.vocab_size));

  LOG_INFO("prepare-data: source=" << p.source << " inputs="
           << (p.inputs.empty() && p.source == "brown" ? default_brown_dir() : join(p.inputs))
           << " out=" << p.out_dir << " vocab_size=" << p.vocab_size
           << " tokenizer=" << (train_tokenizer ? "(train new)" : p.tokenizer_path)
           << " val_fraction=" << p.val_fraction << " seed=" << p.seed);

  std::vector<Document> docs = read_source(p);
  const size_t n_read = docs.size();
  docs.erase(std::remove_if(docs.begin(), docs.end(),
                            [](const Document& d) { return d.text.empty(); }),
             docs.end());
  if (docs.size() != n_read) LOG_INFO("skipped " << n_read - docs.size() << " empty documents");
  if (docs.empty()) fail(join(p.inputs), "", "no non-empty documents in the input");
  ensure_writable_dir(p.out_dir);

  Split split = split_by_document(docs, p.val_fraction, p.seed);
  LOG_INFO("read " << docs.size() << " documents (" << total_bytes(docs) << " bytes): "
           << split.train.size() << " train, " << split.val.size() << " val");

  const auto t_tok = Clock::now();
  std::unique_ptr<text::Tokenizer> tok;
  std::string tok_path;
  if (train_tokenizer) {
    // Train on the train split only, so validation text stays unseen by every learned part.
    tok_path = (fs::path(p.out_dir) / "tokenizer.model").string();
    std::vector<std::string> texts;
    texts.reserve(split.train.size());
    for (const auto& d : split.train) texts.push_back(d.text);
    LOG_INFO("training SentencePiece BPE tokenizer (vocab " << p.vocab_size << ")");
    text::SpmTokenizer::train(texts, p.vocab_size, tok_path, p.seed);
    tok = text::SpmTokenizer::load(tok_path);
  } else {
    // Any tokenizer ecdlm reads (SentencePiece, tokenizer.json, vocab.json + merges.txt), e.g. a
    // pretrained checkpoint's own, so the shards carry that model's ids. Its files are copied.
    tok = text::load_tokenizer(p.tokenizer_path);  // validate before copying
    std::error_code ec;
    const bool is_dir = fs::is_directory(p.tokenizer_path, ec);
    const fs::path dir = is_dir ? fs::path(p.tokenizer_path) : fs::path(p.tokenizer_path).parent_path();
    std::vector<std::string> files;
    if (is_dir) {
      for (const char* f : {"tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model",
                            "tokenizer_config.json", "special_tokens_map.json"})
        if (fs::exists(dir / f, ec)) files.push_back(f);
    } else {
      files.push_back(fs::path(p.tokenizer_path).filename().string());
    }
    for (const auto& f : files) {
      const fs::path dst = fs::path(p.out_dir) / f;
      if (fs::exists(dst, ec) && fs::equivalent(dir / f, dst, ec)) continue;
      fs::copy_file(dir / f, dst, fs::copy_options::overwrite_existing, ec);
      if (ec) fail(dst.string(), "", "cannot copy tokenizer: " + ec.message(), "choose a writable --out directory");
    }
    tok_path = (fs::path(p.out_dir) / files.front()).string();
  }
  const double tok_seconds = seconds_since(t_tok);
  LOG_INFO("tokenizer " << tok_path << ": vocab " << tok->vocab_size() << ", eos "
           << tok->eos_id() << ", mask " << tok->mask_id() << ", pad " << tok->pad_id() << " ("
           << (train_tokenizer ? "trained" : "loaded") << " in " << tok_seconds << " s)");

  const auto t_enc = Clock::now();
  nlohmann::json splits = nlohmann::json::object();
  nlohmann::json tokens = nlohmann::json::object();
  nlohmann::json documents = nlohmann::json::object();
  for (const auto* part : {&split.train, &split.val}) {
    const std::string name = part == &split.train ? "train" : "val";
    const std::vector<int32_t> ids = encode_documents(*tok, *part);
    nlohmann::json extra = {{"split", name},
                            {"num_documents", part->size()},
                            {"num_bytes", total_bytes(*part)},
                            {"eos_token_id", tok->eos_id()},
                            {"source", p.source}};
    write_token_shard(p.out_dir, name, ids, tok->vocab_size(), extra);
    splits[name] = {{"bin", name + ".bin"},
                    {"meta", name + ".json"},
                    {"num_documents", part->size()},
                    {"num_tokens", ids.size()},
                    {"num_bytes", total_bytes(*part)}};
    tokens[name] = ids.size();
    documents[name] = part->size();
    LOG_INFO(name << ": " << part->size() << " documents, " << ids.size() << " tokens");
  }
  const double enc_seconds = seconds_since(t_enc);

  nlohmann::json meta = {{"format", "ecdlm-data-v1"},
                         {"source", p.source},
                         {"inputs", p.inputs},
                         {"seed", p.seed},
                         {"val_fraction", p.val_fraction},
                         {"vocab_size", tok->vocab_size()},
                         {"mask_token_id", tok->mask_id()},
                         {"eos_token_id", tok->eos_id()},
                         {"pad_token_id", tok->pad_id()},
                         {"tokenizer", fs::path(tok_path).filename().string()},
                         {"tokenizer_type", ends_with(tok_path, ".model") ? "sentencepiece" : "huggingface-bpe"},
                         {"tokenizer_trained", train_tokenizer},
                         {"splits", splits}};
  if (p.source == "brown" && p.inputs.empty()) meta["inputs"] = {default_brown_dir()};
  write_file_atomic((fs::path(p.out_dir) / "meta.json").string(), meta.dump(2) + "\n");

  const double total = seconds_since(t0);
  LOG_INFO("prepare-data done in " << total << " s -> " << p.out_dir);
  return {{"out_dir", p.out_dir},
          {"source", p.source},
          {"documents", documents},
          {"tokens", tokens},
          {"vocab_size", tok->vocab_size()},
          {"mask_token_id", tok->mask_id()},
          {"eos_token_id", tok->eos_id()},
          {"pad_token_id", tok->pad_id()},
          {"tokenizer", tok_path},
          {"tokenizer_trained", train_tokenizer},
          {"seconds", {{"tokenizer", tok_seconds}, {"encode", enc_seconds}, {"total", total}}}};
}

}  // namespace ecdlm::data
