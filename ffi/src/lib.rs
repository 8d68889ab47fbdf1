//! Foreign interfaces for device backends.
//!
//! With the `ascend` feature: bindgen-generated CANN ACL / HCCL tables
//! (`sys`), hand-declared aclnn functions (`aclnn`) and safe wrappers (`ascend`),
//! all loaded with `dlopen` at run time — nothing from CANN is linked, so the binary runs
//! (and reports a clear error) on machines without it. Without the feature only
//! [`ascend_available`] exists.
#![warn(missing_docs)]

#[cfg(feature = "ascend")]
pub mod aclnn;
#[cfg(feature = "ascend")]
pub mod ascend;
#[cfg(feature = "ascend")]
#[allow(missing_docs)]
pub mod sys;
// The kernel build rule of build.rs, unit-tested here (it needs no toolchain to check).
#[cfg(all(test, feature = "ascend"))]
#[path = "../kernel_build.rs"]
mod kernel_build;

/// Whether an Ascend NPU runtime can be used by this build: `Err` with a message suitable
/// for `--device npu:N` diagnostics otherwise.
#[cfg(not(feature = "ascend"))]
pub fn ascend_available() -> Result<(), String> {
    Err(
        "this medsam was built without the `ascend` feature; rebuild with \
         `cargo build --release --features ascend` (see docs/ASCEND.md)"
            .to_string(),
    )
}

/// Whether an Ascend NPU runtime can be used by this build: loads the CANN libraries and
/// counts devices; `Err` with the reason otherwise.
#[cfg(feature = "ascend")]
pub fn ascend_available() -> Result<(), String> {
    let rt = ascend::AscendRuntime::load().map_err(|e| e.to_string())?;
    match rt.device_count() {
        Ok(0) => Err("Ascend runtime loaded but it reports 0 devices".to_string()),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(all(test, not(feature = "ascend")))]
mod tests {
    #[test]
    fn reports_missing_feature() {
        let e = super::ascend_available().unwrap_err();
        assert!(e.contains("without the `ascend` feature"), "{e}");
    }
}
