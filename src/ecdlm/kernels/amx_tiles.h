// AMX tile state shared by the AMX-BF16 (gemm_amx.cpp) and AMX-INT8 (quant_amx.cpp) kernels: the
// palette-1 configuration that ldtilecfg loads. Each kernel loads its own shapes per call and
// releases the tiles afterwards.
#pragma once
#include <cstdint>

namespace ecdlm::kernels::detail {

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};  // bytes per row of tile t
  uint8_t rows[16] = {};
};

// CPUID leaf 7 EDX bits of the AMX features, and whether Linux granted this process tile data
// (arch_prctl ARCH_REQ_XCOMP_PERM, 5.16+), probed once per feature.
constexpr int kCpuidAmxBf16 = 22, kCpuidAmxTile = 24, kCpuidAmxInt8 = 25;
bool amx_usable(int feature_bit);

}  // namespace ecdlm::kernels::detail
