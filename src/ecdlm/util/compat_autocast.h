// The CPU autocast state, queried (libtorch 1.13: at::autocast::is_cpu_enabled /
// get_autocast_cpu_dtype; 2.x: is_autocast_enabled(at::kCPU) / get_autocast_dtype(at::kCPU)).
// Its own header so that code asking for it does not pull in compat.h's users' rebuilds.
#pragma once
#include <torch/torch.h>

#include <optional>

namespace ecdlm::compat {

// The dtype CPU autocast casts matmul-class ops to, or nullopt when it is off on this thread.
std::optional<at::ScalarType> cpu_autocast_dtype();

}  // namespace ecdlm::compat
