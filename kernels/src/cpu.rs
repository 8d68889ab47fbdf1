//! Run-time CPU feature detection, shared by every kernel family.

/// The instruction sets a kernel may pick from, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuFeatures {
    pub avx512f: bool,
    pub avx512bf16: bool,
    pub avx2_fma: bool,
    /// AMX tiles with bf16 dot products, usable by this process: the CPU reports amx-tile and
    /// amx-bf16 (CPUID.(7,0):EDX bits 24 and 22) AND the kernel granted the XTILEDATA permission.
    pub amx_bf16: bool,
    /// AVX512-VNNI `vpdpbusd` on zmm (u8 × i8 dot products of 4, into i32).
    pub avx512vnni: bool,
    /// The vendor string of CPUID leaf 0 is "AuthenticAMD" or "HygonGenuine" (Zen cores).
    pub amd: bool,
    /// AVX-VNNI: the same `vpdpbusd` on ymm with a VEX encoding (Alder Lake and later, Zen 5).
    pub avx_vnni: bool,
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
        avx512bf16: std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16"),
        avx2_fma: std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma"),
        amx_bf16: amx_cpuid() && amx_request_permission(),
        avx512vnni: std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vnni"),
        avx_vnni: std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("avxvnni"),
        amd: matches!(&vendor(), b"AuthenticAMD" | b"HygonGenuine"),
    }
}

/// The 12-byte vendor string of CPUID leaf 0 (EBX, EDX, ECX).
#[cfg(target_arch = "x86_64")]
fn vendor() -> [u8; 12] {
    let r = std::arch::x86_64::__cpuid(0);
    let mut v = [0u8; 12];
    v[..4].copy_from_slice(&r.ebx.to_le_bytes());
    v[4..8].copy_from_slice(&r.edx.to_le_bytes());
    v[8..].copy_from_slice(&r.ecx.to_le_bytes());
    v
}

/// amx-bf16 and amx-tile as reported by CPUID leaf 7 sub-leaf 0, EDX bits 22 and 24.
#[cfg(target_arch = "x86_64")]
fn amx_cpuid() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    let max_leaf = __cpuid(0).eax;
    if max_leaf < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    let amx_bf16 = edx & (1 << 22) != 0;
    let amx_tile = edx & (1 << 24) != 0;
    amx_bf16 && amx_tile
}

/// Linux only enables the 8 KiB AMX tile state for a process that asks for it
/// (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`); without the grant the first tile
/// instruction faults, so the AMX path is only enabled if this returns true.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn amx_request_permission() -> bool {
    const SYS_ARCH_PRCTL: usize = 158;
    const ARCH_REQ_XCOMP_PERM: usize = 0x1023;
    const XFEATURE_XTILEDATA: usize = 18;
    let ret: isize;
    // SAFETY: a plain arch_prctl syscall with integer arguments; it touches no user memory.
    // `syscall` clobbers rcx and r11.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL as isize => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

/// Other operating systems: AMX state management is not wired up, so never use it.
#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn amx_request_permission() -> bool {
    false
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> CpuFeatures {
    CpuFeatures {
        avx512f: false,
        avx512bf16: false,
        avx2_fma: false,
        amx_bf16: false,
        avx512vnni: false,
        amd: false,
        avx_vnni: false,
    }
}
