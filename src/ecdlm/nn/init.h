// Random weight init can be skipped when every tensor is about to be replaced by checkpoint data:
// the empty allocations are then never written, so their pages are never touched, and a model
// bigger than RAM can be built and mapped from disk. Every module that initializes its own
// parameters (model/ and moe/ alike) asks weight_init_enabled() first.
#pragma once

namespace ecdlm {

bool weight_init_enabled();

class SkipWeightInit {
 public:
  SkipWeightInit();
  ~SkipWeightInit();
  SkipWeightInit(const SkipWeightInit&) = delete;
  SkipWeightInit& operator=(const SkipWeightInit&) = delete;

 private:
  bool prev_;
};

}  // namespace ecdlm
