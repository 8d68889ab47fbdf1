// Launch glue for the hand-written Ascend C kernels (kernels/ascend/*.cpp), called from Rust
// through the cxx bridge in ffi/src/ascend/custom.rs. Host-only C++: it computes the tiling
// (tile sizes from the Unified Buffer capacity, number of cores) and lays out the kernel
// argument block the way the Ascend C host stub does (parameters in declaration order, each
// at its natural alignment, the block padded to 8 bytes). No CANN header or library is used.
#pragma once
#include <cstdint>
#include "rust/cxx.h"

namespace medsam {
namespace ascend_launch {

struct AttnShape;
struct Ln2dShape;
struct Hardware;
struct LaunchPlan;

// Tiling of rel_pos_attention; throws std::invalid_argument when the shape cannot be tiled
// (e.g. one query row and one key do not fit in the UB).
LaunchPlan plan_rel_pos_attention(const AttnShape& shape, const Hardware& hw);
// Tiling of layer_norm2d; throws std::invalid_argument when c channels of 8 pixels do not fit.
LaunchPlan plan_layer_norm2d(const Ln2dShape& shape, const Hardware& hw);
// Argument block of a kernel whose parameters are all GM_ADDR (device addresses, in order).
rust::Vec<uint8_t> pack_gm_args(rust::Slice<const uint64_t> addrs);

}  // namespace ascend_launch
}  // namespace medsam
