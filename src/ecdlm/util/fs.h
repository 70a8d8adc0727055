// File helpers: atomic writes and JSON reading with errors that name the file.
#pragma once
#include <nlohmann/json.hpp>

#include <string>

namespace ecdlm {

// Writes `content` to `path + ".tmp.<pid>"`, fsyncs, then renames over `path`.
void write_file_atomic(const std::string& path, const std::string& content);

// Reads and parses a JSON file; UserError names the file and the parse position.
nlohmann::json read_json_file(const std::string& path);

std::string read_text_file(const std::string& path);

// Creates `dir` (and parents) and checks it is writable; UserError otherwise.
void ensure_writable_dir(const std::string& dir);

}  // namespace ecdlm
