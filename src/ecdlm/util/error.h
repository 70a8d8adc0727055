// Errors that reach the user name the file, the field and the fix.
#pragma once
#include <stdexcept>
#include <string>

namespace ecdlm {

// Thrown for bad user input (files, configs, flags). The CLI prints what() and exits 2.
class UserError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Builds "FILE: FIELD: PROBLEM (fix: FIX)". Empty parts are left out.
std::string format_error(const std::string& file, const std::string& field,
                         const std::string& problem, const std::string& fix = "");

[[noreturn]] void fail(const std::string& file, const std::string& field,
                       const std::string& problem, const std::string& fix = "");

}  // namespace ecdlm
