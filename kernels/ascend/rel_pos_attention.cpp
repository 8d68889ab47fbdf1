// SAM's attention with decomposed relative-position bias, fused, flash style:
//   out[b, i] = softmax_j(scale * q[b, i] . k[b, j] + rel_h[b, i, j / kw] + rel_w[b, i, j % kw]) . v[b, j]
//   lse[b, i] = log sum_j exp(...)                      (saved for the backward)
// per head b, tiled over keys with the online-softmax recurrences, so the nq x nk score matrix
// is never stored (per core: one score row of tile_k keys).
//
// Work split: items (head b, query tile qt), numbered b * q_tiles + qt, round-robin over the
// cores. For each item, per key tile (k and v tiles double-buffered through TQue), per query
// row r:
//   s_j    = q_r . k_j (+ bias)        m' = max(m_r, max_j s_j)      alpha = exp(m_r - m')
//   p_j    = exp(s_j - m')             l_r = alpha * l_r + sum_j p_j
//   acc_r  = alpha * acc_r + sum_j p_j v_j                            m_r = m'
// then out_r = acc_r / l_r and lse_r = m_r + ln(l_r). Host reference of exactly this algorithm
// (same tiling, same recurrences), compiled and tested on the CPU:
// kernels/src/ascend_tiled.rs (rel_pos_attention_block). Tiling: tiling.h / ffi/src/launch.cc.
//
// NOT COMPILED OR RUN HERE (no CANN toolkit / NPU on the development machine): written against
// the documented Ascend C API, unverified on hardware. This first version uses only the vector
// unit (q.k as Mul + ReduceSum per key, p.v as Axpy per key, scalar bias adds): correct for any
// d / dv but slow. Moving both products to the cube unit (Matmul API, AIC + AIV) is the
// performance step that remains. m starts at -FLT_MAX (the host reference uses -inf; both give
// alpha = 0 on the first key tile).
#include "common.h"

using namespace AscendC;

namespace {

constexpr int32_t BUFFER_NUM = 2;
constexpr uint32_t SCRATCH_BYTES = 8 * 1024;

class RelPosAttentionKernel {
public:
    __aicore__ inline void Init(GM_ADDR q, GM_ADDR k, GM_ADDR v, GM_ADDR relH, GM_ADDR relW,
                                GM_ADDR out, GM_ADDR lse, GM_ADDR tiling)
    {
        bh_ = medsam::TilingWord(tiling, 0);
        nq_ = medsam::TilingWord(tiling, 1);
        nk_ = medsam::TilingWord(tiling, 2);
        d_ = medsam::TilingWord(tiling, 3);
        dv_ = medsam::TilingWord(tiling, 4);
        kh_ = medsam::TilingWord(tiling, 5);
        kw_ = medsam::TilingWord(tiling, 6);
        hasRel_ = medsam::TilingWord(tiling, 7) != 0;
        tq_ = medsam::TilingWord(tiling, 8);
        tk_ = medsam::TilingWord(tiling, 9);
        qTiles_ = medsam::TilingWord(tiling, 11);
        scale_ = medsam::TilingFloat(tiling, 12);
        dA_ = medsam::Align8(d_);
        dvA_ = medsam::Align8(dv_);
        tkA_ = medsam::Align8(tk_);

        qGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float *>(q), uint64_t(bh_) * nq_ * d_);
        kGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float *>(k), uint64_t(bh_) * nk_ * d_);
        vGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float *>(v), uint64_t(bh_) * nk_ * dv_);
        outGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float *>(out), uint64_t(bh_) * nq_ * dv_);
        lseGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float *>(lse), uint64_t(bh_) * nq_);
        if (hasRel_) {
            relHGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float *>(relH), uint64_t(bh_) * nq_ * kh_);
            relWGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float *>(relW), uint64_t(bh_) * nq_ * kw_);
        }
        // UB plan (mirrors attn_ub_bytes in ffi/src/launch.cc).
        pipe_.InitBuffer(qQue_, 1, tq_ * dA_ * sizeof(float));
        pipe_.InitBuffer(kQue_, BUFFER_NUM, tk_ * dA_ * sizeof(float));
        pipe_.InitBuffer(vQue_, BUFFER_NUM, tk_ * dvA_ * sizeof(float));
        pipe_.InitBuffer(accQue_, 1, tq_ * dvA_ * sizeof(float));
        pipe_.InitBuffer(lseQue_, 1, medsam::Align8(tq_) * sizeof(float));
        pipe_.InitBuffer(s_, tkA_ * sizeof(float));
        pipe_.InitBuffer(m_, medsam::Align8(tq_) * sizeof(float));
        pipe_.InitBuffer(l_, medsam::Align8(tq_) * sizeof(float));
        pipe_.InitBuffer(one_, dA_ * sizeof(float));
        pipe_.InitBuffer(scratch_, SCRATCH_BYTES);
        if (hasRel_) {
            pipe_.InitBuffer(relH_, tq_ * medsam::Align8(kh_) * sizeof(float));
            pipe_.InitBuffer(relW_, tq_ * medsam::Align8(kw_) * sizeof(float));
        }
    }

    __aicore__ inline void Process()
    {
        const uint32_t items = bh_ * qTiles_;
        for (uint32_t item = GetBlockIdx(); item < items; item += GetBlockNum()) {
            Item(item / qTiles_, (item % qTiles_) * tq_);
        }
    }

private:
    // rows x len floats from GM (contiguous rows) into UB rows `pitch` floats apart.
    __aicore__ inline void LoadRows(const LocalTensor<float> &dst, const GlobalTensor<float> &src,
                                    uint32_t rows, uint32_t len, uint32_t pitch)
    {
        DataCopyExtParams p{static_cast<uint16_t>(rows), len * uint32_t(sizeof(float)), 0,
                            pitch / 8U - (len + 7U) / 8U, 0};
        DataCopyPad(dst, src, p, DataCopyPadExtParams<float>{false, 0, 0, 0.0f});
    }

    __aicore__ inline void Item(uint32_t b, uint32_t q0)
    {
        const uint32_t rows = medsam::Min(tq_, nq_ - q0);
        LocalTensor<float> q = qQue_.AllocTensor<float>();
        LoadRows(q, qGm_[(uint64_t(b) * nq_ + q0) * d_], rows, d_, dA_);
        qQue_.EnQue(q);
        if (hasRel_) {
            LoadRows(relH_.Get<float>(), relHGm_[(uint64_t(b) * nq_ + q0) * kh_], rows, kh_,
                     medsam::Align8(kh_));
            LoadRows(relW_.Get<float>(), relWGm_[(uint64_t(b) * nq_ + q0) * kw_], rows, kw_,
                     medsam::Align8(kw_));
            PipeBarrier<PIPE_ALL>();  // MTE2 -> S (scalar reads of the bias rows)
        }
        q = qQue_.DeQue<float>();
        Muls(q, q, scale_, rows * dA_);

        LocalTensor<float> m = m_.Get<float>();
        LocalTensor<float> l = l_.Get<float>();
        LocalTensor<float> acc = accQue_.AllocTensor<float>();
        Duplicate(m, -3.402823466e+38f, rows);  // -FLT_MAX: exp(m - m') underflows to 0
        Duplicate(l, 0.0f, rows);
        Duplicate(acc, 0.0f, rows * dvA_);
        medsam::VectorToScalar();

        for (uint32_t k0 = 0; k0 < nk_; k0 += tk_) {
            const uint32_t cols = medsam::Min(tk_, nk_ - k0);
            LocalTensor<float> kt = kQue_.AllocTensor<float>();
            LoadRows(kt, kGm_[(uint64_t(b) * nk_ + k0) * d_], cols, d_, dA_);
            kQue_.EnQue(kt);
            LocalTensor<float> vt = vQue_.AllocTensor<float>();
            LoadRows(vt, vGm_[(uint64_t(b) * nk_ + k0) * dv_], cols, dv_, dvA_);
            vQue_.EnQue(vt);
            kt = kQue_.DeQue<float>();
            vt = vQue_.DeQue<float>();
            for (uint32_t r = 0; r < rows; ++r) {
                Row(q, kt, vt, acc, m, l, r, k0, cols);
            }
            kQue_.FreeTensor(kt);
            vQue_.FreeTensor(vt);
        }

        // out = acc / l ; lse = m + ln(l)
        LocalTensor<float> lseT = lseQue_.AllocTensor<float>();
        medsam::ScalarToVector();  // m / l were last written by scalar SetValue
        for (uint32_t r = 0; r < rows; ++r) {
            Muls(acc[r * dvA_], acc[r * dvA_], 1.0f / l.GetValue(r), dv_);
        }
        Ln(lseT, l, rows);
        Add(lseT, lseT, m, rows);
        accQue_.EnQue(acc);
        lseQue_.EnQue(lseT);
        acc = accQue_.DeQue<float>();
        lseT = lseQue_.DeQue<float>();
        DataCopyExtParams o{static_cast<uint16_t>(rows), dv_ * uint32_t(sizeof(float)),
                            dvA_ / 8U - (dv_ + 7U) / 8U, 0, 0};
        DataCopyPad(outGm_[(uint64_t(b) * nq_ + q0) * dv_], acc, o);
        DataCopyExtParams ol{1, rows * uint32_t(sizeof(float)), 0, 0, 0};
        DataCopyPad(lseGm_[uint64_t(b) * nq_ + q0], lseT, ol);
        accQue_.FreeTensor(acc);
        lseQue_.FreeTensor(lseT);
        qQue_.FreeTensor(q);
    }

    // One query row against one key tile: scores, online-softmax update, acc += p . v.
    __aicore__ inline void Row(const LocalTensor<float> &q, const LocalTensor<float> &kt,
                               const LocalTensor<float> &vt, const LocalTensor<float> &acc,
                               const LocalTensor<float> &m, const LocalTensor<float> &l,
                               uint32_t r, uint32_t k0, uint32_t cols)
    {
        LocalTensor<float> s = s_.Get<float>();
        LocalTensor<float> prod = one_.Get<float>();
        // red[0] and red[8] hold reduction results, each in its own 32-byte block; the work
        // buffer starts at red[16], so a count-mode reduction never writes over its own work area.
        LocalTensor<float> red = scratch_.Get<float>();
        LocalTensor<float> work = red[16];
        // s_j = q_r . k_j : Mul + ReduceSum per key (general d; the cube unit is the fast path)
        for (uint32_t j = 0; j < cols; ++j) {
            Mul(prod, q[r * dA_], kt[j * dA_], d_);
            ReduceSum(red, prod, work, d_);
            medsam::VectorToScalar();
            float sj = red.GetValue(0);
            if (hasRel_) {
                const uint32_t g = k0 + j;
                sj += relH_.Get<float>().GetValue(r * medsam::Align8(kh_) + g / kw_) +
                      relW_.Get<float>().GetValue(r * medsam::Align8(kw_) + g % kw_);
            }
            s.SetValue(j, sj);
        }
        medsam::ScalarToVector();
        ReduceMax(red, s, work, cols);
        medsam::VectorToScalar();
        const float mOld = m.GetValue(r);
        const float tileMax = red.GetValue(0);
        const float mNew = mOld > tileMax ? mOld : tileMax;
        // alpha = exp(mOld - mNew) on the vector unit (one lane)
        red.SetValue(0, mOld - mNew);
        medsam::ScalarToVector();
        Exp(red, red, 1);
        Adds(s, s, -mNew, cols);
        Exp(s, s, cols);
        ReduceSum(red[8], s, work, cols);
        medsam::VectorToScalar();
        const float alpha = red.GetValue(0);
        const float psum = red.GetValue(8);
        l.SetValue(r, alpha * l.GetValue(r) + psum);
        m.SetValue(r, mNew);
        LocalTensor<float> accR = acc[r * dvA_];
        Muls(accR, accR, alpha, dv_);
        for (uint32_t j = 0; j < cols; ++j) {
            Axpy(accR, vt[j * dvA_], s.GetValue(j), dv_);
        }
        medsam::VectorToScalar();  // s is rewritten by the next row
    }

    TPipe pipe_;
    TQue<QuePosition::VECIN, 1> qQue_;
    TQue<QuePosition::VECIN, BUFFER_NUM> kQue_, vQue_;
    TQue<QuePosition::VECOUT, 1> accQue_, lseQue_;
    TBuf<TPosition::VECCALC> s_, m_, l_, one_, scratch_, relH_, relW_;
    GlobalTensor<float> qGm_, kGm_, vGm_, relHGm_, relWGm_, outGm_, lseGm_;
    uint32_t bh_ = 0, nq_ = 0, nk_ = 0, d_ = 0, dv_ = 0, kh_ = 0, kw_ = 0;
    uint32_t tq_ = 0, tk_ = 0, qTiles_ = 0, dA_ = 0, dvA_ = 0, tkA_ = 0;
    bool hasRel_ = false;
    float scale_ = 1.0f;
};

}  // namespace

extern "C" __global__ __aicore__ void rel_pos_attention(GM_ADDR q, GM_ADDR k, GM_ADDR v,
                                                        GM_ADDR relH, GM_ADDR relW, GM_ADDR out,
                                                        GM_ADDR lse, GM_ADDR tiling)
{
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);  // vector cores only, as the samples declare
    RelPosAttentionKernel kernel;
    kernel.Init(q, k, v, relH, relW, out, lse, tiling);
    kernel.Process();
}
