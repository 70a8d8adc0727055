#include "ecdlm/bench/tokenize_bench.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unistd.h>

#include "ecdlm/data/corpus.h"
#include "ecdlm/text/hf_tokenizer.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/log.h"
#include "ecdlm/util/stats.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace ecdlm::bench {
namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// Runs the oracle on the same documents; fills the hf_* fields or oracle_note.
void run_oracle(const TokenizeBenchParams& p, const std::vector<data::Document>& docs, TokenizeBenchResult& r) {
  if (std::system("command -v node >/dev/null 2>&1") != 0) {
    r.oracle_note = "node not found";
    return;
  }
  if (!fs::exists(fs::path(p.npm_modules) / "@anush008" / "tokenizers") || !fs::exists(p.oracle_script)) {
    r.oracle_note = "oracle not installed (" + p.npm_modules + ", " + p.oracle_script + "; run scripts/setup.sh)";
    return;
  }
  const fs::path docs_file = fs::temp_directory_path() / ("ecdlm-tokbench-" + std::to_string(::getpid()) + ".jsonl");
  {
    std::ofstream out(docs_file, std::ios::binary);
    for (const auto& d : docs) out << json{{"text", d.text}}.dump() << "\n";
    if (!out) fail(docs_file.string(), "", "cannot write the benchmark documents", "free space in TMPDIR");
  }
  const std::string cmd = "node " + shell_quote(p.oracle_script) + " bench " + shell_quote(p.npm_modules) + " " +
                          shell_quote(p.tokenizer) + " " + shell_quote(docs_file.string()) + " " +
                          std::to_string(p.reps);
  std::string output;
  if (FILE* f = ::popen(cmd.c_str(), "r")) {
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) output.append(buf, n);
    const int rc = ::pclose(f);
    if (rc != 0) r.oracle_note = "oracle exited with status " + std::to_string(rc);
  } else {
    r.oracle_note = "cannot start node";
  }
  std::error_code ec;
  fs::remove(docs_file, ec);
  if (!r.oracle_note.empty()) return;
  try {
    const json j = json::parse(output.substr(output.find('{')));
    r.hf_load_s = j.at("load_s").get<double>();
    r.hf_encode_s = j.at("seconds").get<std::vector<double>>();
    r.hf_tokens = j.at("tokens").get<int64_t>();
  } catch (const std::exception& e) {
    r.oracle_note = std::string("unreadable oracle output: ") + e.what();
    return;
  }
  r.have_oracle = true;
  const double t = median(r.hf_encode_s);
  r.hf_mb_per_s = t > 0 ? static_cast<double>(r.bytes) / 1e6 / t : 0.0;
  r.hf_tokens_per_s = t > 0 ? static_cast<double>(r.hf_tokens) / t : 0.0;
  r.ratio = r.hf_mb_per_s > 0 ? r.mb_per_s / r.hf_mb_per_s : 0.0;
  if (r.hf_tokens != r.tokens)
    LOG_WARN("bench tokenize: the oracle produced " << r.hf_tokens << " tokens, ecdlm " << r.tokens);
}

}  // namespace

TokenizeBenchResult run_tokenize_bench(const TokenizeBenchParams& p) {
  TokenizeBenchResult r;
  const auto docs = data::read_brown(p.brown_dir.empty() ? data::default_brown_dir() : p.brown_dir);
  r.documents = static_cast<int64_t>(docs.size());
  for (const auto& d : docs) r.bytes += static_cast<int64_t>(d.text.size());
  std::vector<double> loads;
  std::unique_ptr<text::HfTokenizer> tok;
  for (int64_t i = 0; i < std::max<int64_t>(1, p.reps); ++i) {
    tok.reset();
    const auto t0 = std::chrono::steady_clock::now();
    tok = text::HfTokenizer::load_json(p.tokenizer);
    loads.push_back(seconds_since(t0));
  }
  r.load_s = median(loads);
  for (int64_t rep = 0; rep <= p.reps; ++rep) {  // pass 0 warms up
    int64_t n = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (const auto& d : docs) n += static_cast<int64_t>(tok->encode(d.text, false).size());
    const double s = seconds_since(t0);
    if (rep > 0) r.encode_s.push_back(s);
    r.tokens = n;
  }
  const double t = median(r.encode_s);
  r.mb_per_s = static_cast<double>(r.bytes) / 1e6 / t;
  r.tokens_per_s = static_cast<double>(r.tokens) / t;
  if (p.run_oracle) run_oracle(p, docs, r);
  else r.oracle_note = "--no-oracle";
  return r;
}

std::string to_markdown(const TokenizeBenchResult& r, const TokenizeBenchParams& p) {
  std::ostringstream os;
  char buf[256];
  os << "Tokenizer: " << p.tokenizer << "\n";
  os << "Corpus: Brown, " << r.documents << " documents, " << r.bytes << " bytes; one encode() per document, "
     << "one thread, median of " << p.reps << " passes after a warm-up\n\n";
  os << "| tokenizer | load (s) | MB/s | tokens/s | tokens |\n|---|---:|---:|---:|---:|\n";
  std::snprintf(buf, sizeof(buf), "| ecdlm | %.3f | %.2f | %.0f | %lld |\n", r.load_s, r.mb_per_s, r.tokens_per_s,
                static_cast<long long>(r.tokens));
  os << buf;
  if (r.have_oracle) {
    std::snprintf(buf, sizeof(buf), "| HF tokenizers (Node binding) | %.3f | %.2f | %.0f | %lld |\n", r.hf_load_s,
                  r.hf_mb_per_s, r.hf_tokens_per_s, static_cast<long long>(r.hf_tokens));
    os << buf;
    std::snprintf(buf, sizeof(buf), "\nThroughput ratio ecdlm / HF: %.2fx\n", r.ratio);
    os << buf;
  } else {
    os << "\nHF oracle not run: " << r.oracle_note << "\n";
  }
  return os.str();
}

json to_json(const TokenizeBenchResult& r) {
  json j = {{"ecdlm_mb_per_s", r.mb_per_s},
            {"hf_mb_per_s", r.have_oracle ? json(r.hf_mb_per_s) : json()},
            {"ratio", r.have_oracle ? json(r.ratio) : json()},
            {"load_s", r.load_s},
            {"ecdlm_tokens_per_s", r.tokens_per_s},
            {"hf_tokens_per_s", r.have_oracle ? json(r.hf_tokens_per_s) : json()},
            {"hf_load_s", r.have_oracle ? json(r.hf_load_s) : json()},
            {"documents", r.documents},
            {"bytes", r.bytes},
            {"tokens", r.tokens},
            {"ecdlm_encode_s", r.encode_s},
            {"hf_encode_s", r.hf_encode_s}};
  if (!r.have_oracle) j["oracle_note"] = r.oracle_note;
  return j;
}

}  // namespace ecdlm::bench
