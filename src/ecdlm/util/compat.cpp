#include "ecdlm/util/compat.h"
#include "ecdlm/util/compat_autocast.h"

#include <ATen/autocast_mode.h>
#include <torch/version.h>

#include <fstream>
#include <string>

namespace ecdlm::compat {

CpuAutocast::CpuAutocast(bool enabled, at::ScalarType dtype)
    : prev_enabled_(at::autocast::is_cpu_enabled()),
      prev_dtype_(at::autocast::get_autocast_cpu_dtype()),
      active_(enabled) {
  if (!active_) return;
  at::autocast::set_cpu_enabled(true);
  at::autocast::set_autocast_cpu_dtype(dtype);
}

CpuAutocast::~CpuAutocast() {
  if (!active_) return;
  at::autocast::set_cpu_enabled(prev_enabled_);
  at::autocast::set_autocast_cpu_dtype(prev_dtype_);
  // Cached bf16 weight casts are only valid inside one autocast region.
  at::autocast::clear_cache();
}

std::string detect_blas() {
  // Make sure the BLAS library is loaded (it may be dlopen'ed lazily through alternatives).
  auto a = torch::ones({8, 8});
  (void)torch::mm(a, a);
  std::ifstream maps("/proc/self/maps");
  std::string line, found = "unknown";
  while (std::getline(maps, line)) {
    if (line.find("openblas") != std::string::npos) return "openblas";
    if (line.find("libmkl") != std::string::npos) found = "mkl";
    if (line.find("/blas/libblas.so") != std::string::npos && found == "unknown") found = "reference";
  }
  return found;
}

std::string torch_version() { return TORCH_VERSION; }

}  // namespace ecdlm::compat

namespace ecdlm::compat {
AutocastOff::AutocastOff() : prev_(at::autocast::is_cpu_enabled()) {
  at::autocast::set_cpu_enabled(false);
}
AutocastOff::~AutocastOff() { at::autocast::set_cpu_enabled(prev_); }
}  // namespace ecdlm::compat

namespace ecdlm::compat {
DefaultDtype::DefaultDtype(at::ScalarType dtype) : prev_(c10::get_default_dtype()) {
  c10::set_default_dtype(c10::scalarTypeToTypeMeta(dtype));
}
DefaultDtype::~DefaultDtype() { c10::set_default_dtype(prev_); }
}  // namespace ecdlm::compat

namespace ecdlm::compat {
std::optional<at::ScalarType> cpu_autocast_dtype() {
  if (!at::autocast::is_cpu_enabled()) return std::nullopt;
  return at::autocast::get_autocast_cpu_dtype();
}
}  // namespace ecdlm::compat
