/* Input of bindgen (ffi/build.rs, feature `ascend`). Parsed as C++14: hccl.h is not valid C. */
#include "acl/acl.h"
#include "hccl/hccl.h"
