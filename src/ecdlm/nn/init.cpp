#include "ecdlm/nn/init.h"

namespace ecdlm {

namespace {
thread_local bool g_init_enabled = true;
}

bool weight_init_enabled() { return g_init_enabled; }
SkipWeightInit::SkipWeightInit() : prev_(g_init_enabled) { g_init_enabled = false; }
SkipWeightInit::~SkipWeightInit() { g_init_enabled = prev_; }

}  // namespace ecdlm
