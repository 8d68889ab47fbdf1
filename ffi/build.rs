//! Build script of `medsam-ffi`.
//!
//! Without the `ascend` feature it does nothing (no bindgen, no libclang).
//! With it, it runs bindgen over `wrapper.h` (CANN `acl/acl.h`, `acl/acl_op_compiler.h`,
//! `hccl/hccl.h`) and writes four files into `OUT_DIR`:
//! * `types.rs`: types, enums (as plain constants) and macros, no functions;
//! * `ascendcl.rs`: struct `AscendClLib`, the dynamic-loading table of the `acl*` functions
//!   of `libascendcl.so` (everything in `acl/*.h` but the op compiler);
//! * `op_compiler.rs`: struct `AclOpCompilerLib` for `libacl_op_compiler.so`;
//! * `hccl.rs`: struct `HcclLib` for `libhccl.so`.
//!
//! Nothing from CANN is linked: the tables are filled with `dlopen`/`dlsym` at run time.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "ascend")]
    ascend::generate();
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

        // 1. types / constants shared by the three tables.
        write(
            base(&dirs, &wrapper)
                .with_codegen_config(types_only)
                .allowlist_item(ALLOW)
                .allowlist_type("aclrt.*|acl[A-Z].*|Hccl.*"),
            &out,
            "types.rs",
        );
        // 2. libascendcl.so: acl* functions of acl/*.h except acl_op_compiler.h.
        write(
            base(&dirs, &wrapper)
                .with_codegen_config(C::FUNCTIONS)
                .allowlist_function("acl.*")
                .blocklist_file(".*acl_op_compiler\\.h")
                .dynamic_library_name("AscendClLib")
                .dynamic_link_require_all(false),
            &out,
            "ascendcl.rs",
        );
        // 3. libacl_op_compiler.so
        write(
            base(&dirs, &wrapper)
                .with_codegen_config(C::FUNCTIONS)
                .allowlist_file(".*acl_op_compiler\\.h")
                .dynamic_library_name("AclOpCompilerLib")
                .dynamic_link_require_all(false),
            &out,
            "op_compiler.rs",
        );
        // 4. libhccl.so
        write(
            base(&dirs, &wrapper)
                .with_codegen_config(C::FUNCTIONS)
                .allowlist_function("Hccl.*|hccl.*")
                .dynamic_library_name("HcclLib")
                .dynamic_link_require_all(false),
            &out,
            "hccl.rs",
        );
    }
}
