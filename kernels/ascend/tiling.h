// Tiling structs shared by the Ascend C kernels in this directory (device side) and by the
// launch glue of medsam-ffi (ffi/src/launch.cc, host side, which fills them and uploads the
// bytes to device memory; the kernel's last argument `GM_ADDR tiling` points at them).
// Plain C layout: 4-byte fields, no padding. The Rust mirrors are
// medsam_kernels::ascend_tiled::{RelPosAttnTiling, LayerNorm2dTiling}; keep the three in sync
// (the sizes are asserted on both sides).
#ifndef MEDSAM_ASCEND_TILING_H
#define MEDSAM_ASCEND_TILING_H

#include <stdint.h>

struct RelPosAttnTiling {
    uint32_t bh;         // batch x heads
    uint32_t nq;         // queries per head
    uint32_t nk;         // keys per head
    uint32_t d;          // q/k feature size
    uint32_t dv;         // v feature size
    uint32_t kh;         // key grid height (kh * kw == nk when has_rel)
    uint32_t kw;         // key grid width
    uint32_t has_rel;    // 1: add rel_h[b, q, j / kw] + rel_w[b, q, j % kw]
    uint32_t tile_q;     // queries per tile
    uint32_t tile_k;     // keys per tile
    uint32_t block_dim;  // AI cores launched
    uint32_t q_tiles;    // ceil(nq / tile_q)
    float scale;         // applied to q before q.k
    uint32_t reserved;
};

struct LayerNorm2dTiling {
    uint32_t n;          // images
    uint32_t c;          // channels (normalised axis)
    uint32_t hw;         // pixels per channel plane
    uint32_t tile_hw;    // pixels per tile (multiple of 8: 32-byte UB rows)
    uint32_t block_dim;  // AI cores launched
    uint32_t hw_tiles;   // ceil(hw / tile_hw)
    float eps;
    uint32_t reserved;
};

#endif  // MEDSAM_ASCEND_TILING_H
