#include "ecdlm/util/fs.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "ecdlm/util/error.h"

namespace ecdlm {
namespace fs = std::filesystem;

void write_file_atomic(const std::string& path, const std::string& content) {
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0)
    fail(path, "", std::string("cannot create file: ") + std::strerror(errno),
         "check the directory exists and is writable");
  size_t off = 0;
  while (off < content.size()) {
    ssize_t n = ::write(fd, content.data() + off, content.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const std::string err = n < 0 ? std::strerror(errno) : "nothing written";
      ::close(fd);
      ::unlink(tmp.c_str());
      fail(path, "", "write failed: " + err, "free disk space");
    }
    off += static_cast<size_t>(n);
  }
  // A full disk can surface only at fsync / close (delayed allocation): check both.
  int err = ::fsync(fd) != 0 ? errno : 0;
  if (::close(fd) != 0 && err == 0) err = errno;
  if (err != 0) {
    ::unlink(tmp.c_str());
    fail(path, "", std::string("write failed: ") + std::strerror(err), "free disk space");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    ::unlink(tmp.c_str());
    fail(path, "", "rename failed: " + why, "check permissions");
  }
}

std::string read_text_file(const std::string& path) {
  std::error_code ec;
  // An ifstream opens a directory without complaint and then reads nothing.
  if (fs::is_directory(path, ec)) fail(path, "", "is a directory, not a file", "pass the file's path");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "", std::string("cannot open file: ") + std::strerror(errno), "check the path and its permissions");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) fail(path, "", std::string("cannot read file: ") + std::strerror(errno), "check the file");
  return ss.str();
}

nlohmann::json read_json_file(const std::string& path) {
  std::string text = read_text_file(path);
  if (text.find_first_not_of(" \t\r\n") == std::string::npos)
    fail(path, "", "the file is empty, expected a JSON document", "write the JSON or pass another file");
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    fail(path, "", std::string("invalid JSON: ") + e.what(), "fix the JSON syntax");
  }
}

void ensure_writable_dir(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir))
    fail(dir, "", "cannot create output directory: " + ec.message(), "choose a writable path");
  if (::access(dir.c_str(), W_OK) != 0)
    fail(dir, "", "output directory is not writable", "choose a writable path or fix permissions");
}

}  // namespace ecdlm
