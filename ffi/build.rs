//! Build script of `medsam-ffi`.
//!
//! Without the `ascend` feature it does nothing (no bindgen, no libclang).
//! With it, it runs bindgen over `wrapper.h` (CANN `acl/acl.h`, `hccl/hccl.h`) and writes
//! three files into `OUT_DIR`:
//! * `types.rs`: types, enums (as plain constants) and macros, no functions;
//! * `ascendcl.rs`: struct `AscendClLib`, the dynamic-loading table of the `acl*` functions
//!   of `libascendcl.so`;
//! * `hccl.rs`: struct `HcclLib` for `libhccl.so`.
//!
//! When the include root also has `aclnnop/` (a CANN toolkit install, or
//! `MEDSAM_CANN_INCLUDE` pointing at one), it bindgens the aclnn headers we call into
//! `aclnn_headers.rs`, writes `aclnn_check.rs` (one line per hand-declared function of
//! `src/aclnn.rs`) and sets `cfg(medsam_aclnn_headers)`: a hand-declared signature that
//! differs from the header then fails compilation (`aclnn::header_check`).
//!
//! Nothing from CANN is linked: the tables are filled with `dlopen`/`dlsym` at run time.
//!
//! Also with `ascend`:
//! * the C++ launch glue of the custom kernels (`src/launch.cc`, bridged by
//!   `src/ascend/custom.rs`) is compiled with `cxx_build` (host C++ only, no CANN);
//! * the Ascend C kernels `kernels/ascend/*.cpp` are compiled into one device binary in
//!   `OUT_DIR` **when a CANN toolchain is found** (see [`kernels`]), and its path is exported
//!   as `MEDSAM_ASCEND_KERNELS` (read with `option_env!`). Without a toolchain, or when the
//!   compiler fails, one `cargo:warning` says why and the build goes on: the NPU backend then
//!   uses its aclnn compositions.

#[cfg(feature = "ascend")]
#[path = "kernel_build.rs"]
mod kernel_build;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernel_build.rs");
    println!("cargo::rustc-check-cfg=cfg(medsam_aclnn_headers)");
    #[cfg(feature = "ascend")]
    {
        ascend::generate();
        launch_glue();
        kernels::build();
    }
}

/// `src/launch.cc` + the cxx bridge of `src/ascend/custom.rs`.
#[cfg(feature = "ascend")]
fn launch_glue() {
    use std::path::PathBuf;
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let tiling_dir = manifest.join("../kernels/ascend");
    cxx_build::bridge("src/ascend/custom.rs")
        .file("src/launch.cc")
        .include(&tiling_dir)
        .std("c++14")
        .flag_if_supported("-Wno-unused-parameter")
        .compile("medsam_ffi_launch");
    for f in ["src/ascend/custom.rs", "src/launch.cc", "src/launch.h"] {
        println!("cargo:rerun-if-changed={f}");
    }
    println!(
        "cargo:rerun-if-changed={}",
        tiling_dir.join("tiling.h").display()
    );
}

/// Compiling `kernels/ascend/*.cpp` (Ascend C) into a device binary, when a CANN toolchain
/// is present. Never fails the build: every problem becomes one `cargo:warning`.
///
/// Toolchain lookup, first match wins:
/// 1. `$MEDSAM_ASCEND_KERNEL_CC` (explicit compiler; `bisheng` or `ccec` style decided by its
///    file name);
/// 2. for each of `$ASCEND_TOOLKIT_HOME`, `$ASCEND_HOME_PATH`: `bin/bisheng`, then
///    `compiler/ccec_compiler/bin/bisheng`, then `compiler/ccec_compiler/bin/ccec`.
///
/// `MEDSAM_ASCEND_SOC_ARCH` overrides the target architecture (bisheng `--npu-arch`, default
/// `dav-2201`; ccec `--cce-aicore-arch`, default `dav-c220-vec`: Ascend 910B vector cores).
/// `MEDSAM_ASCEND_SKIP_KERNELS=1` skips the step. The two sources are compiled as one
/// translation unit (an `#include` of each) so the binary holds both kernels.
#[cfg(feature = "ascend")]
mod kernels {
    use std::env;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use super::kernel_build::{commands, Style};

    fn find_compiler() -> Result<(PathBuf, Style), String> {
        if let Some(cc) = env::var_os("MEDSAM_ASCEND_KERNEL_CC") {
            let p = PathBuf::from(cc);
            let style = if p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().contains("ccec"))
            {
                Style::Ccec
            } else {
                Style::Bisheng
            };
            return if p.is_file() {
                Ok((p, style))
            } else {
                Err(format!(
                    "MEDSAM_ASCEND_KERNEL_CC={} does not exist",
                    p.display()
                ))
            };
        }
        let mut tried = Vec::new();
        for var in ["ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH"] {
            let Some(root) = env::var_os(var).map(PathBuf::from) else {
                continue;
            };
            for (rel, style) in [
                ("bin/bisheng", Style::Bisheng),
                ("compiler/ccec_compiler/bin/bisheng", Style::Bisheng),
                ("compiler/ccec_compiler/bin/ccec", Style::Ccec),
            ] {
                let p = root.join(rel);
                if p.is_file() {
                    return Ok((p, style));
                }
                tried.push(p.display().to_string());
            }
        }
        if tried.is_empty() {
            Err(
                "no CANN toolkit (ASCEND_TOOLKIT_HOME / ASCEND_HOME_PATH unset; source the \
                 toolkit's set_env.sh)"
                    .to_string(),
            )
        } else {
            Err(format!(
                "no Ascend C compiler found (tried {})",
                tried.join(", ")
            ))
        }
    }

    /// `ld.lld` beside the compiler (the toolkit ships it in `compiler/ccec_compiler/bin`),
    /// else from `PATH`.
    fn find_ld(cc: &Path) -> PathBuf {
        cc.parent()
            .map(|d| d.join("ld.lld"))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("ld.lld"))
    }

    /// Include directories of `kernel_operator.h` that exist under the toolkit root.
    fn includes(cc: &Path) -> Vec<PathBuf> {
        let mut roots: Vec<PathBuf> = ["ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH"]
            .iter()
            .filter_map(|v| env::var_os(v).map(PathBuf::from))
            .collect();
        // compiler/ccec_compiler/bin/<cc> or bin/<cc> → the toolkit root
        for up in [1, 3] {
            if let Some(r) = cc.ancestors().nth(up + 1) {
                roots.push(r.to_path_buf());
            }
        }
        let mut v = Vec::new();
        for r in roots {
            for rel in [
                "include",
                "compiler/tikcpp",
                "compiler/tikcpp/tikcfw",
                "compiler/tikcpp/tikcfw/impl",
                "compiler/tikcpp/tikcfw/interface",
                "compiler/ascendc/include/basic_api",
                "compiler/ascendc/include/highlevel_api",
                "ascendc/include/basic_api",
                "ascendc/include/highlevel_api",
            ] {
                let p = r.join(rel);
                if p.is_dir() && !v.contains(&p) {
                    v.push(p);
                }
            }
        }
        v
    }

    fn try_build(out: &Path, src_dir: &Path) -> Result<PathBuf, String> {
        let (cc, style) = find_compiler()?;
        let mut srcs: Vec<PathBuf> = std::fs::read_dir(src_dir)
            .map_err(|e| format!("cannot read {}: {e}", src_dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "cpp"))
            .collect();
        srcs.sort();
        let unity = out.join("medsam_ascend_kernels.cpp");
        let body: String = srcs
            .iter()
            .map(|s| format!("#include \"{}\"\n", s.display()))
            .collect();
        std::fs::write(&unity, body)
            .map_err(|e| format!("cannot write {}: {e}", unity.display()))?;
        let arch = env::var("MEDSAM_ASCEND_SOC_ARCH").ok();
        let mut incs = vec![src_dir.to_path_buf()];
        incs.extend(includes(&cc));
        let ld = find_ld(&cc);
        let (cmds, bin) = commands(style, &cc, &ld, arch.as_deref(), &incs, &unity, out);
        for (prog, args) in cmds {
            let res = Command::new(&prog)
                .args(&args)
                .output()
                .map_err(|e| format!("cannot run {}: {e}", prog.display()))?;
            if !res.status.success() {
                let err = String::from_utf8_lossy(&res.stderr);
                let first: Vec<&str> = err.lines().take(6).collect();
                return Err(format!(
                    "{} failed ({}): {}",
                    prog.display(),
                    res.status,
                    first.join(" | ")
                ));
            }
        }
        if !bin.is_file() {
            return Err(format!("the link produced no {}", bin.display()));
        }
        Ok(bin)
    }

    pub fn build() {
        for v in [
            "MEDSAM_ASCEND_KERNEL_CC",
            "MEDSAM_ASCEND_SOC_ARCH",
            "MEDSAM_ASCEND_SKIP_KERNELS",
        ] {
            println!("cargo:rerun-if-env-changed={v}");
        }
        let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
        let src_dir = manifest.join("..").join("kernels").join("ascend");
        println!("cargo:rerun-if-changed={}", src_dir.display());
        if env::var_os("MEDSAM_ASCEND_SKIP_KERNELS").is_some_and(|v| v == "1") {
            println!(
                "cargo:warning=medsam-ffi: custom Ascend C kernels skipped \
                 (MEDSAM_ASCEND_SKIP_KERNELS=1); the NPU backend uses aclnn compositions"
            );
            return;
        }
        let out = PathBuf::from(env::var("OUT_DIR").unwrap());
        match try_build(&out, &src_dir) {
            Ok(bin) => {
                println!("cargo:rustc-env=MEDSAM_ASCEND_KERNELS={}", bin.display());
                println!(
                    "cargo:warning=medsam-ffi: custom Ascend C kernels built: {}",
                    bin.display()
                );
            }
            Err(why) => println!(
                "cargo:warning=medsam-ffi: custom Ascend C kernels (kernels/ascend) skipped: {why}; \
                 the NPU backend uses aclnn compositions unless MEDSAM_ASCEND_KERNELS names a binary"
            ),
        }
    }
}

#[cfg(feature = "ascend")]
mod ascend {
    use std::env;
    use std::path::{Path, PathBuf};

    const ALLOW: &str = "acl.*|hccl.*|Hccl.*|ACL_.*|HCCL_.*";

    /// Include roots to try, in order, with the name of the place each came from.
    fn candidates() -> Vec<(String, PathBuf)> {
        let mut v = Vec::new();
        if let Some(p) = env::var_os("MEDSAM_CANN_INCLUDE") {
            v.push(("MEDSAM_CANN_INCLUDE".to_string(), PathBuf::from(p)));
            return v; // an explicit override is the only candidate
        }
        for var in ["ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH"] {
            if let Some(p) = env::var_os(var) {
                v.push((format!("${var}/include"), PathBuf::from(p).join("include")));
            }
        }
        // Default destination of scripts/fetch_cann_headers.sh (workspace target dir).
        let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
        let ws = manifest.parent().unwrap_or(&manifest).to_path_buf();
        v.push((
            "scripts/fetch_cann_headers.sh default".to_string(),
            ws.join("target").join("cann-headers"),
        ));
        v
    }

    /// Include directories for one root: a CANN install (`root/acl/acl.h`) or the
    /// torch-npu wheel layout kept by the fetch script (`root/third_party/{acl,hccl}/inc`).
    fn include_dirs(root: &Path) -> Option<Vec<PathBuf>> {
        if root.join("acl/acl.h").is_file() && root.join("hccl/hccl.h").is_file() {
            return Some(vec![root.to_path_buf()]);
        }
        let acl = root.join("third_party/acl/inc");
        let hccl = root.join("third_party/hccl/inc");
        if acl.join("acl/acl.h").is_file() && hccl.join("hccl/hccl.h").is_file() {
            return Some(vec![root.to_path_buf(), acl, hccl]);
        }
        None
    }

    fn base(dirs: &[PathBuf], wrapper: &Path) -> bindgen::Builder {
        let mut b = bindgen::Builder::default()
            .header(wrapper.to_string_lossy())
            .clang_args(["-x", "c++", "-std=c++14"])
            .default_enum_style(bindgen::EnumVariation::Consts)
            .prepend_enum_name(false)
            .layout_tests(true)
            .derive_default(true)
            .derive_debug(false)
            .generate_comments(false)
            .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
        for d in dirs {
            b = b.clang_arg(format!("-I{}", d.display()));
        }
        b
    }

    fn write(b: bindgen::Builder, out: &Path, name: &str) {
        b.generate()
            .unwrap_or_else(|e| panic!("bindgen failed for {name}: {e}"))
            .write_to_file(out.join(name))
            .unwrap_or_else(|e| panic!("cannot write {name}: {e}"));
    }

    pub fn generate() {
        for v in [
            "MEDSAM_CANN_INCLUDE",
            "ASCEND_TOOLKIT_HOME",
            "ASCEND_HOME_PATH",
        ] {
            println!("cargo:rerun-if-env-changed={v}");
        }
        let tried = candidates();
        let found = tried
            .iter()
            .find_map(|(from, root)| include_dirs(root).map(|d| (from.clone(), root.clone(), d)));
        let Some((from, root, dirs)) = found else {
            let list: Vec<String> = tried
                .iter()
                .map(|(from, p)| format!("  {} ({from})", p.display()))
                .collect();
            eprintln!(
                "\n\nmedsam-ffi: feature `ascend` needs the CANN headers (acl/acl.h, hccl/hccl.h), \
                 none found in:\n{}\n\nEither set MEDSAM_CANN_INCLUDE=<dir>, or source the CANN \
                 toolkit's set_env.sh (sets ASCEND_TOOLKIT_HOME / ASCEND_HOME_PATH), or run \
                 `scripts/fetch_cann_headers.sh` (headers from the torch-npu wheel on PyPI, \
                 into target/cann-headers).\n",
                list.join("\n")
            );
            std::process::exit(1);
        };
        println!(
            "cargo:warning=medsam-ffi: CANN headers from {} ({from})",
            root.display()
        );
        println!("cargo:rerun-if-changed={}", root.display());

        let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
        let wrapper = manifest.join("wrapper.h");
        println!("cargo:rerun-if-changed={}", wrapper.display());
        let out = PathBuf::from(env::var("OUT_DIR").unwrap());

        use bindgen::CodegenConfig as C;
        let types_only = C::TYPES | C::VARS;

        // 1. types / constants shared by the tables.
        write(
            base(&dirs, &wrapper)
                .with_codegen_config(types_only)
                .allowlist_item(ALLOW)
                .allowlist_type("aclrt.*|acl[A-Z].*|Hccl.*"),
            &out,
            "types.rs",
        );
        // 2. libascendcl.so: acl* functions of acl/*.h; 3. libhccl.so.
        let tables = [
            ("acl.*", "AscendClLib", "ascendcl.rs"),
            ("Hccl.*|hccl.*", "HcclLib", "hccl.rs"),
        ];
        for (functions, library, file) in tables {
            write(
                base(&dirs, &wrapper)
                    .with_codegen_config(C::FUNCTIONS)
                    .allowlist_function(functions)
                    .dynamic_library_name(library)
                    .dynamic_link_require_all(false),
                &out,
                file,
            );
        }
        super::aclnn_check::generate(&root, &dirs, &out, &manifest);
    }
}

/// Compile-time check of the hand-declared aclnn signatures (`src/aclnn.rs`) against the real
/// headers, when the include root has `aclnnop/`.
#[cfg(feature = "ascend")]
mod aclnn_check {
    use std::path::{Path, PathBuf};

    /// `(field, C name)` of every function of `src/aclnn.rs`, plus the `aclnnop/` headers.
    fn declared(src: &str) -> (Vec<(String, String)>, Vec<String>) {
        let (mut fns, mut headers) = (Vec::new(), Vec::new());
        for line in src.lines() {
            let t = line.trim_start();
            // NnopBase: `aclCreateTensor: fn(...`
            if let Some((name, _)) = t.split_once(": fn(") {
                if name.starts_with("acl") && name.chars().all(|c| c.is_ascii_alphanumeric()) {
                    fns.push((name.to_string(), name.to_string()));
                    continue;
                }
                // OpApi: `Matmul("aclnn_matmul.h"): fn(...`
                if let Some((op, hdr)) = name.split_once("(\"") {
                    let hdr = hdr.trim_end_matches("\")");
                    if op.chars().all(|c| c.is_ascii_alphanumeric()) {
                        fns.push((
                            format!("{op}.map(|f| f.0)"),
                            format!("aclnn{op}GetWorkspaceSize"),
                        ));
                        fns.push((format!("{op}.map(|f| f.1)"), format!("aclnn{op}")));
                        headers.push(hdr.to_string());
                    }
                }
            }
        }
        (fns, headers)
    }

    pub fn generate(root: &Path, dirs: &[PathBuf], out: &Path, manifest: &Path) {
        let aclnnop = root.join("aclnnop");
        if !aclnnop.is_dir() {
            println!(
                "cargo:warning=medsam-ffi: no {} here: the aclnn signatures of src/aclnn.rs are \
                 not checked against headers in this build",
                aclnnop.display()
            );
            return;
        }
        let src_path = manifest.join("src/aclnn.rs");
        println!("cargo:rerun-if-changed={}", src_path.display());
        let src = std::fs::read_to_string(&src_path).expect("read src/aclnn.rs");
        let (fns, headers) = declared(&src);
        let mut wrapper =
            String::from("#include \"aclnn/acl_meta.h\"\n#include \"aclnn/aclnn_base.h\"\n");
        for h in &headers {
            if aclnnop.join(h).is_file() {
                wrapper += &format!("#include \"aclnnop/{h}\"\n");
            } else {
                println!("cargo:warning=medsam-ffi: aclnnop/{h} not found: not checked");
            }
        }
        let wpath = out.join("aclnn_wrapper.h");
        std::fs::write(&wpath, wrapper).expect("write aclnn_wrapper.h");
        let names: Vec<&str> = fns.iter().map(|(_, c)| c.as_str()).collect();
        let mut b = bindgen::Builder::default()
            .header(wpath.to_string_lossy())
            .clang_args(["-x", "c++", "-std=c++14"])
            .with_codegen_config(bindgen::CodegenConfig::FUNCTIONS)
            .generate_comments(false)
            .allowlist_function(format!("^({})$", names.join("|")));
        for d in dirs.iter().chain([&aclnnop, &root.join("aclnn")]) {
            b = b.clang_arg(format!("-I{}", d.display()));
        }
        let code = b
            .generate()
            .unwrap_or_else(|e| panic!("bindgen over the aclnn headers in {}: {e}", root.display()))
            .to_string();
        std::fs::write(out.join("aclnn_headers.rs"), &code).expect("write aclnn_headers.rs");
        let mut check = String::from("{\n");
        let (mut n, mut missing) = (0, Vec::new());
        for (field, c) in &fns {
            if code.contains(&format!("pub fn {c}(")) {
                let table = if c.starts_with("aclnn")
                    && !c.starts_with("aclnnInit")
                    && !c.starts_with("aclnnFinalize")
                {
                    "api"
                } else {
                    "nn"
                };
                check += &format!("    same({table}.{field}, headers::{c});\n");
                n += 1;
            } else {
                missing.push(c.as_str());
            }
        }
        check += "}\n";
        std::fs::write(out.join("aclnn_check.rs"), check).expect("write aclnn_check.rs");
        println!("cargo:rustc-cfg=medsam_aclnn_headers");
        println!(
            "cargo:warning=medsam-ffi: {n} aclnn signatures checked against {}{}",
            root.display(),
            if missing.is_empty() {
                String::new()
            } else {
                format!("; not declared there (unchecked): {}", missing.join(", "))
            }
        );
    }
}
