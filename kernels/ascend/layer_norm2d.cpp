// LayerNorm2d (SAM): x [n, c, hw] (NCHW, contiguous) normalised over the channel axis at every
// (image, pixel), y = (x - mean) * rstd * gamma[c] + beta[c]; mean / rstd [n, hw] are written
// for the backward. No transpose: a core copies a [c, th] block (c rows of th contiguous
// pixels, one strided DataCopyPad) into the UB and reduces over rows with whole-row vector
// instructions along the pixel axis.
//
// Work split: items (image ni, pixel tile pt), numbered ni * hw_tiles + pt, taken round-robin by
// the cores (item = GetBlockIdx(), + GetBlockNum(), ...). Tiling: tiling.h / ffi/src/launch.cc.
// Host reference of exactly this algorithm, compiled and tested on the CPU:
// kernels/src/ascend_tiled.rs (layer_norm2d_block).
//
// NOT COMPILED OR RUN HERE (no CANN toolkit / NPU on the development machine): written against
// the documented Ascend C API, unverified on hardware. Synchronisation is deliberately simple
// (a full pipe barrier per item); double-buffering the block is the obvious next step.
#include "common.h"

using namespace AscendC;

namespace {

class LayerNorm2dKernel {
public:
    __aicore__ inline void Init(GM_ADDR x, GM_ADDR gamma, GM_ADDR beta, GM_ADDR y, GM_ADDR mean,
                                GM_ADDR rstd, GM_ADDR tiling)
    {
        n_ = medsam::TilingWord(tiling, 0);
        c_ = medsam::TilingWord(tiling, 1);
        hw_ = medsam::TilingWord(tiling, 2);
        th_ = medsam::TilingWord(tiling, 3);
        hwTiles_ = medsam::TilingWord(tiling, 5);
        eps_ = medsam::TilingFloat(tiling, 6);
        const uint64_t total = uint64_t(n_) * c_ * hw_;
        xGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float *>(x), total);
        yGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float *>(y), total);
        gGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float *>(gamma), c_);
        bGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float *>(beta), c_);
        meanGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float *>(mean), uint64_t(n_) * hw_);
        rstdGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float *>(rstd), uint64_t(n_) * hw_);
        pipe_.InitBuffer(block_, c_ * th_ * sizeof(float));
        pipe_.InitBuffer(mean_, th_ * sizeof(float));
        pipe_.InitBuffer(rstd_, th_ * sizeof(float));
        pipe_.InitBuffer(tmp_, th_ * sizeof(float));
    }

    __aicore__ inline void Process()
    {
        const uint32_t items = n_ * hwTiles_;
        for (uint32_t item = GetBlockIdx(); item < items; item += GetBlockNum()) {
            Tile(item / hwTiles_, (item % hwTiles_) * th_);
            PipeBarrier<PIPE_ALL>();  // the block is reused by the next item
        }
    }

private:
    __aicore__ inline void Tile(uint32_t ni, uint32_t p0)
    {
        const uint32_t np = medsam::Min(th_, hw_ - p0);
        const uint64_t base = uint64_t(ni) * c_ * hw_ + p0;
        LocalTensor<float> x = block_.Get<float>();
        LocalTensor<float> mean = mean_.Get<float>();
        LocalTensor<float> rstd = rstd_.Get<float>();
        LocalTensor<float> tmp = tmp_.Get<float>();
        // c rows of np pixels; GM gap (hw - np) floats, UB rows th floats apart.
        const uint32_t rowBlocks = (np + 7U) / 8U;
        DataCopyExtParams in{static_cast<uint16_t>(c_), np * uint32_t(sizeof(float)),
                             (hw_ - np) * uint32_t(sizeof(float)), th_ / 8U - rowBlocks, 0};
        DataCopyPad(x, xGm_[base], in, DataCopyPadExtParams<float>{false, 0, 0, 0.0f});
        PipeBarrier<PIPE_ALL>();  // MTE2 -> V

        const float invC = 1.0f / static_cast<float>(c_);
        Duplicate(mean, 0.0f, np);
        for (uint32_t ci = 0; ci < c_; ++ci) {
            Add(mean, mean, x[ci * th_], np);
        }
        Muls(mean, mean, invC, np);
        Duplicate(rstd, 0.0f, np);
        for (uint32_t ci = 0; ci < c_; ++ci) {
            Sub(tmp, x[ci * th_], mean, np);
            Mul(tmp, tmp, tmp, np);
            Add(rstd, rstd, tmp, np);
        }
        Muls(rstd, rstd, invC, np);
        Adds(rstd, rstd, eps_, np);
        Sqrt(rstd, rstd, np);
        Duplicate(tmp, 1.0f, np);
        Div(rstd, tmp, rstd, np);
        for (uint32_t ci = 0; ci < c_; ++ci) {
            LocalTensor<float> row = x[ci * th_];
            Sub(row, row, mean, np);
            Mul(row, row, rstd, np);
            Muls(row, row, gGm_.GetValue(ci), np);
            Adds(row, row, bGm_.GetValue(ci), np);
        }
        PipeBarrier<PIPE_ALL>();  // V -> MTE3

        DataCopyExtParams out{static_cast<uint16_t>(c_), np * uint32_t(sizeof(float)),
                              th_ / 8U - rowBlocks, (hw_ - np) * uint32_t(sizeof(float)), 0};
        DataCopyPad(yGm_[base], x, out);
        DataCopyExtParams row{1, np * uint32_t(sizeof(float)), 0, 0, 0};
        DataCopyPad(meanGm_[uint64_t(ni) * hw_ + p0], mean, row);
        DataCopyPad(rstdGm_[uint64_t(ni) * hw_ + p0], rstd, row);
    }

    TPipe pipe_;
    TBuf<TPosition::VECCALC> block_, mean_, rstd_, tmp_;
    GlobalTensor<float> xGm_, yGm_, gGm_, bGm_, meanGm_, rstdGm_;
    uint32_t n_ = 0, c_ = 0, hw_ = 0, th_ = 0, hwTiles_ = 0;
    float eps_ = 0.0f;
};

}  // namespace

extern "C" __global__ __aicore__ void layer_norm2d(GM_ADDR x, GM_ADDR gamma, GM_ADDR beta,
                                                   GM_ADDR y, GM_ADDR mean, GM_ADDR rstd,
                                                   GM_ADDR tiling)
{
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);  // vector cores only, as the samples declare
    LayerNorm2dKernel k;
    k.Init(x, gamma, beta, y, mean, rstd, tiling);
    k.Process();
}
