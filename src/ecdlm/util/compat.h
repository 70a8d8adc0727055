// Everything that depends on the libtorch version lives here, so a 2.x build is a small step.
// Built and tested against Debian libtorch 1.13.
#pragma once
#include <torch/torch.h>

namespace ecdlm::compat {

// RAII: CPU autocast to `dtype` (bf16) for matmul-class ops; fp32 everywhere else.
// libtorch 1.13: at::autocast::set_cpu_enabled / set_autocast_cpu_dtype.
// libtorch 2.x: at::autocast::set_autocast_enabled(at::kCPU, ...) / set_autocast_dtype.
class CpuAutocast {
 public:
  explicit CpuAutocast(bool enabled, at::ScalarType dtype = at::kBFloat16);
  ~CpuAutocast();
  CpuAutocast(const CpuAutocast&) = delete;
  CpuAutocast& operator=(const CpuAutocast&) = delete;

 private:
  bool prev_enabled_;
  at::ScalarType prev_dtype_;
  bool active_;
};

// Name of the BLAS shared object actually mapped into this process ("openblas", "reference",
// "mkl", or "unknown"). Reads /proc/self/maps after forcing one GEMM.
std::string detect_blas();

std::string torch_version();

}  // namespace ecdlm::compat

namespace ecdlm::compat {
// RAII: run the enclosed ops in their input dtype even inside an autocast region
// (router and softmax paths must stay fp32).
class AutocastOff {
 public:
  AutocastOff();
  ~AutocastOff();
  AutocastOff(const AutocastOff&) = delete;
  AutocastOff& operator=(const AutocastOff&) = delete;

 private:
  bool prev_;
};
}  // namespace ecdlm::compat

namespace ecdlm::compat {
// RAII: the dtype torch::empty & co. give floating tensors without an explicit one, so a module
// can allocate its parameters directly in bf16 (c10::set_default_dtype; not thread-local).
class DefaultDtype {
 public:
  explicit DefaultDtype(at::ScalarType dtype);
  ~DefaultDtype();
  DefaultDtype(const DefaultDtype&) = delete;
  DefaultDtype& operator=(const DefaultDtype&) = delete;

 private:
  caffe2::TypeMeta prev_;
};
}  // namespace ecdlm::compat
