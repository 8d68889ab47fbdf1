// See launch.h. Tiling rules (kept in step with the UB allocations of kernels/ascend/*.cpp):
//  * every UB buffer is a whole number of 32-byte blocks (8 floats);
//  * rel_pos_attention holds, per core: q tile [tq, D], k and v tiles double-buffered
//    2 x [tk, D] and 2 x [tk, DV], one score row [TK], the accumulator [tq, DV], m / l / lse
//    [TQ] each, a product row [D], rel_h / rel_w tile rows [tq, KH] and [tq, KW], and a
//    reduction scratch of 8 KiB (upper-case = rounded up to 8 floats);
//  * layer_norm2d holds the [c, th] block, mean / rstd / tmp rows [th], gamma / beta [C] and
//    the same scratch.
// Tile sizes start at tq = 64 queries and tk = 128 keys (tk = 256 when nk is large) and are
// halved (tq first) until the plan fits.
#include "medsam-ffi/src/ascend/custom.rs.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "tiling.h"

static_assert(sizeof(RelPosAttnTiling) == 56, "RelPosAttnTiling layout (Rust mirror: 56 bytes)");
static_assert(sizeof(LayerNorm2dTiling) == 32, "LayerNorm2dTiling layout (Rust mirror: 32 bytes)");

namespace medsam {
namespace ascend_launch {

namespace {

constexpr uint64_t kFloat = 4;
constexpr uint64_t kScratchBytes = 8 * 1024;

uint64_t align8(uint64_t n) { return (n + 7) / 8 * 8; }

template <typename T>
rust::Vec<uint8_t> to_bytes(const T& t) {
    rust::Vec<uint8_t> v;
    v.reserve(sizeof(T));
    const uint8_t* p = reinterpret_cast<const uint8_t*>(&t);
    for (size_t i = 0; i < sizeof(T); ++i) v.push_back(p[i]);
    return v;
}

// The plan of tiling `t` whose work is `items` independent pieces: block dim = min(cores,
// items), at least 1, written into the tiling before it is serialised.
template <typename T>
LaunchPlan make_plan(T& t, uint64_t items, const Hardware& hw, uint32_t tile_a, uint32_t tile_b) {
    t.block_dim = uint32_t(std::max<uint64_t>(1, std::min<uint64_t>(hw.cores, items)));
    LaunchPlan p;
    p.block_dim = t.block_dim;
    p.tile_a = tile_a;
    p.tile_b = tile_b;
    p.tiling = to_bytes(t);
    return p;
}

uint64_t attn_ub_bytes(const AttnShape& s, uint64_t tq, uint64_t tk) {
    uint64_t f = tq * align8(s.d)                 // q tile
                 + 2 * tk * align8(s.d)           // k tiles (double buffer)
                 + 2 * tk * align8(s.dv)          // v tiles (double buffer)
                 + align8(tk)                     // score row
                 + tq * align8(s.dv)              // accumulator
                 + 3 * align8(tq)                 // m, l, lse
                 + align8(s.d);                   // product scratch
    if (s.has_rel) f += tq * align8(s.kh) + tq * align8(s.kw);
    return f * kFloat + kScratchBytes;
}

}  // namespace

LaunchPlan plan_rel_pos_attention(const AttnShape& s, const Hardware& hw) {
    if (s.nk == 0 || s.d == 0 || s.dv == 0)
        throw std::invalid_argument("rel_pos_attention: nk, d and dv must be > 0");
    if (s.has_rel && uint64_t(s.kh) * s.kw != s.nk)
        throw std::invalid_argument("rel_pos_attention: kh*kw (" + std::to_string(s.kh) + "*" +
                                    std::to_string(s.kw) + ") != nk (" + std::to_string(s.nk) + ")");
    if (hw.cores == 0) throw std::invalid_argument("rel_pos_attention: 0 cores");
    uint64_t tq = std::min<uint64_t>(std::max<uint32_t>(s.nq, 1), 64);
    uint64_t tk = std::min<uint64_t>(s.nk, s.nk >= 1024 ? 256 : 128);
    while (attn_ub_bytes(s, tq, tk) > hw.ub_bytes) {
        if (tq > 1) {
            tq = (tq + 1) / 2;
        } else if (tk > 1) {
            tk = (tk + 1) / 2;
        } else {
            throw std::invalid_argument(
                "rel_pos_attention: one query and one key (d=" + std::to_string(s.d) +
                ", dv=" + std::to_string(s.dv) + ") do not fit in " + std::to_string(hw.ub_bytes) +
                " bytes of UB");
        }
    }
    RelPosAttnTiling t{};
    t.bh = s.bh;
    t.nq = s.nq;
    t.nk = s.nk;
    t.d = s.d;
    t.dv = s.dv;
    t.kh = s.has_rel ? s.kh : 0;
    t.kw = s.has_rel ? s.kw : 0;
    t.has_rel = s.has_rel ? 1 : 0;
    t.tile_q = uint32_t(tq);
    t.tile_k = uint32_t(tk);
    t.q_tiles = uint32_t((uint64_t(s.nq) + tq - 1) / tq);
    t.scale = s.scale;
    return make_plan(t, uint64_t(s.bh) * t.q_tiles, hw, t.tile_q, t.tile_k);
}

LaunchPlan plan_layer_norm2d(const Ln2dShape& s, const Hardware& hw) {
    if (s.c == 0) throw std::invalid_argument("layer_norm2d: c must be > 0");
    if (s.c > 4095)
        throw std::invalid_argument("layer_norm2d: c = " + std::to_string(s.c) +
                                    " exceeds the 4095 rows of one strided DataCopyPad");
    if (hw.cores == 0) throw std::invalid_argument("layer_norm2d: 0 cores");
    uint64_t fixed = 2 * align8(s.c) * kFloat + kScratchBytes;
    if (fixed >= hw.ub_bytes) throw std::invalid_argument("layer_norm2d: gamma/beta do not fit in UB");
    uint64_t per_px = (uint64_t(s.c) + 3) * kFloat;
    uint64_t th = (hw.ub_bytes - fixed) / per_px / 8 * 8;
    if (th == 0)
        throw std::invalid_argument("layer_norm2d: c = " + std::to_string(s.c) +
                                    " channels of 8 pixels do not fit in " +
                                    std::to_string(hw.ub_bytes) + " bytes of UB");
    th = std::min<uint64_t>(th, align8(std::max<uint32_t>(s.hw, 1)));
    LayerNorm2dTiling t{};
    t.n = s.n;
    t.c = s.c;
    t.hw = s.hw;
    t.tile_hw = uint32_t(th);
    t.hw_tiles = uint32_t((uint64_t(s.hw) + th - 1) / th);
    t.eps = s.eps;
    return make_plan(t, uint64_t(s.n) * t.hw_tiles, hw, t.tile_hw, 0);
}

rust::Vec<uint8_t> pack_gm_args(rust::Slice<const uint64_t> addrs) {
    // Host-stub layout: each GM_ADDR parameter is an 8-byte value at an 8-byte-aligned offset,
    // in declaration order; the block is a multiple of 8 bytes.
    rust::Vec<uint8_t> v;
    size_t off = 0;
    for (uint64_t a : addrs) {
        const size_t align = alignof(uint64_t);
        while (off % align != 0) {
            v.push_back(0);
            ++off;
        }
        uint8_t b[sizeof(uint64_t)];
        std::memcpy(b, &a, sizeof a);
        for (uint8_t x : b) v.push_back(x);
        off += sizeof a;
    }
    while (off % 8 != 0) {
        v.push_back(0);
        ++off;
    }
    return v;
}

}  // namespace ascend_launch
}  // namespace medsam
