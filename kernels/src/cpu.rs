//! Run-time CPU feature detection, shared by every kernel family.

/// The instruction sets a kernel may pick from, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuFeatures {
    pub avx512f: bool,
    pub avx512bf16: bool,
    pub avx2_fma: bool,
    pub amx_bf16: bool,
}

/// Detected once; cheap to call.
pub fn features() -> CpuFeatures {
    use std::sync::OnceLock;
    static F: OnceLock<CpuFeatures> = OnceLock::new();
    *F.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> CpuFeatures {
    CpuFeatures {
        avx512f: std::arch::is_x86_feature_detected!("avx512f"),
        avx512bf16: std::arch::is_x86_feature_detected!("avx512bf16"),
        avx2_fma: std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma"),
        amx_bf16: false,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> CpuFeatures {
    CpuFeatures {
        avx512f: false,
        avx512bf16: false,
        avx2_fma: false,
        amx_bf16: false,
    }
}
