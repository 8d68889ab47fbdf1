//! The commands that turn `kernels/ascend/*.cpp` (Ascend C) into a device binary that
//! `aclrtBinaryLoadFromFile` loads. Shared by `build.rs` (which runs them) and the crate's
//! unit tests (which check them without a toolchain).
//!
//! The rule is asc-devkit's `ascendc_fatbin_library` (cmake), behind hicann/runtime's
//! `example/2_advanced_features/kernel/0_launch_kernel` sample:
//! 1. compile the device code only (`bisheng -x asc --npu-arch=… --aicore-only -c`, or
//!    `ccec -x cce --cce-aicore-only --cce-aicore-arch=… -c`) into `device.o`;
//! 2. link it into a loadable AI Core ELF: `ld.lld -m aicorelinux -Ttext=0 device.o -static`.
//!
//! Without `--aicore-only`, `-x asc -c` makes a *host* object with the device code embedded
//! for host-stub registration, which the binary loader rejects.

use std::path::{Path, PathBuf};

/// Which compiler driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// `bisheng` (`-x asc`, `--npu-arch=dav-…`).
    Bisheng,
    /// `ccec` (`-x cce`, `--cce-aicore-arch=dav-…`).
    Ccec,
}

/// One command: program and arguments.
pub type Cmd = (PathBuf, Vec<String>);

/// The compile and link commands for `unity` (one translation unit including every kernel)
/// into `out_dir/medsam_ascend_kernels.o`. `arch` overrides the target architecture; `ld` is
/// the `ld.lld` to use.
pub fn commands(
    style: Style,
    cc: &Path,
    ld: &Path,
    arch: Option<&str>,
    includes: &[PathBuf],
    unity: &Path,
    out_dir: &Path,
) -> (Vec<Cmd>, PathBuf) {
    let device_o = out_dir.join("medsam_ascend_kernels.device.o");
    let bin = out_dir.join("medsam_ascend_kernels.o");
    let mut c: Vec<String> = match style {
        Style::Bisheng => vec![
            "-x".into(),
            "asc".into(),
            format!("--npu-arch={}", arch.unwrap_or("dav-2201")),
            "--aicore-only".into(),
        ],
        Style::Ccec => vec![
            "-x".into(),
            "cce".into(),
            "--cce-aicore-only".into(),
            format!("--cce-aicore-arch={}", arch.unwrap_or("dav-c220-vec")),
            "-mllvm".into(),
            "-cce-aicore-stack-size=0x8000".into(),
        ],
    };
    c.extend(["-O2".into(), "-std=c++17".into()]);
    c.extend(includes.iter().map(|i| format!("-I{}", i.display())));
    c.extend([
        "-c".into(),
        unity.display().to_string(),
        "-o".into(),
        device_o.display().to_string(),
    ]);
    let link = vec![
        "-m".into(),
        "aicorelinux".into(),
        "-Ttext=0".into(),
        device_o.display().to_string(),
        "-static".into(),
        "-o".into(),
        bin.display().to_string(),
    ];
    (vec![(cc.to_path_buf(), c), (ld.to_path_buf(), link)], bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(style: Style) -> Vec<Cmd> {
        commands(
            style,
            Path::new("/t/bin/cc"),
            Path::new("/t/bin/ld.lld"),
            None,
            &[PathBuf::from("/k")],
            Path::new("/o/u.cpp"),
            Path::new("/o"),
        )
        .0
    }

    /// Issue 15 bug 3: device-only compile, then the aicorelinux static link.
    #[test]
    fn device_binary_follows_ascendc_fatbin_library() {
        for (style, flag) in [
            (Style::Bisheng, "--aicore-only"),
            (Style::Ccec, "--cce-aicore-only"),
        ] {
            let cmds = plan(style);
            assert_eq!(cmds.len(), 2, "{style:?}: compile + link");
            let (cc, args) = &cmds[0];
            assert_eq!(cc, Path::new("/t/bin/cc"));
            assert!(args.iter().any(|a| a == flag), "{style:?}: {args:?}");
            assert!(args.iter().any(|a| a == "-c"), "{args:?}");
            let (ld, largs) = &cmds[1];
            assert!(ld.ends_with("ld.lld"), "{ld:?}");
            let joined = largs.join(" ");
            assert!(joined.starts_with("-m aicorelinux -Ttext=0 "), "{joined}");
            assert!(joined.contains("-static"), "{joined}");
            assert!(joined.ends_with("/o/medsam_ascend_kernels.o"), "{joined}");
        }
    }
}
