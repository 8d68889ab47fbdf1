// Helpers shared by the Ascend C kernels of this directory (device code, Ascend C).
// NOT COMPILED ON THE DEVELOPMENT MACHINE (no CANN toolkit): see README.md beside this file.
#ifndef MEDSAM_ASCEND_COMMON_H
#define MEDSAM_ASCEND_COMMON_H

#include "kernel_operator.h"
#include "tiling.h"

namespace medsam {

// UB rows are whole 32-byte DataBlocks: 8 floats.
__aicore__ inline uint32_t Align8(uint32_t n) { return (n + 7U) / 8U * 8U; }
__aicore__ inline uint32_t Min(uint32_t a, uint32_t b) { return a < b ? a : b; }

// Wait until vector instructions issued so far have written UB, before scalar reads
// (GetValue) of their results.
__aicore__ inline void VectorToScalar()
{
    event_t e = static_cast<event_t>(GetTPipePtr()->FetchEventID(AscendC::HardEvent::V_S));
    AscendC::SetFlag<AscendC::HardEvent::V_S>(e);
    AscendC::WaitFlag<AscendC::HardEvent::V_S>(e);
}

// Make scalar UB writes (SetValue) visible to the vector instructions that follow.
__aicore__ inline void ScalarToVector()
{
    event_t e = static_cast<event_t>(GetTPipePtr()->FetchEventID(AscendC::HardEvent::S_V));
    AscendC::SetFlag<AscendC::HardEvent::S_V>(e);
    AscendC::WaitFlag<AscendC::HardEvent::S_V>(e);
}

// The tiling struct lives in GM (uploaded by the host glue); read it word by word.
__aicore__ inline uint32_t TilingWord(GM_ADDR tiling, uint32_t i)
{
    return reinterpret_cast<__gm__ uint32_t *>(tiling)[i];
}
__aicore__ inline float TilingFloat(GM_ADDR tiling, uint32_t i)
{
    return reinterpret_cast<__gm__ float *>(tiling)[i];
}

}  // namespace medsam

#endif  // MEDSAM_ASCEND_COMMON_H
