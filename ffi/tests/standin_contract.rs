//! CANN's contract, checked on the TEST-ONLY stand-in runtime (`tests/ascend_standin/`): one
//! test per defect of issue 15 that the old code had and the stand-in now refuses the way
//! CANN does (the rule and its source are in docs/ASCEND.md, "Contract"). Links only
//! `medsam-ffi`, so it builds in seconds.
//!
//! Emulation knobs of the stand-in (`standin_set_*`) act on the calling thread only, so these
//! tests can run in parallel; each one resets what it changed.
#![cfg(feature = "ascend")]

#[path = "../../tests/common/standin.rs"]
mod standin;
use medsam_ffi::ascend::HcclComm;
use medsam_ffi::ascend::*;
use medsam_ffi::sys::types::*;
use standin::*;
use std::ffi::{c_char, CString};
use std::path::Path;
use std::sync::OnceLock;

/// This binary's name for its stand-in directory.
const STANDIN: &str = "medsam-ffi-contract";

fn lib_dir() -> &'static Path {
    standin_dir(STANDIN)
}

fn rt() -> &'static AscendRuntime {
    static RT: OnceLock<&'static AscendRuntime> = OnceLock::new();
    RT.get_or_init(|| open_standin(lib_dir()))
}

/// A stand-in control function (not a CANN symbol).
fn knob<T: Copy>(name: &str) -> T {
    static LIB: OnceLock<libloading::Library> = OnceLock::new();
    let lib = LIB.get_or_init(|| unsafe {
        libloading::Library::new(lib_dir().join("libascendcl.so")).expect("stand-in")
    });
    let sym = format!("{name}\0");
    unsafe { *lib.get::<T>(sym.as_bytes()).expect(name) }
}

fn set_soc(name: Option<&str>) {
    let f: unsafe extern "C" fn(*const c_char) = knob("standin_set_soc");
    let c = name.map(|n| CString::new(n).unwrap());
    unsafe { f(c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr())) }
}

fn set_cann_version(v: Option<&str>) {
    let f: unsafe extern "C" fn(*const c_char) = knob("standin_set_cann_version");
    let c = v.map(|n| CString::new(n).unwrap());
    unsafe { f(c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr())) }
}

/// Σ x² as a 1×1 convolution of a [1,1,4,4] input with itself.
fn conv_sum_of_squares(stream: &Stream) -> Result<f32> {
    let (got, want) = conv_self(stream)?;
    assert!((got - want).abs() < 1e-4, "conv {got} vs {want}");
    Ok(got)
}

/// Bug 1: 4-D operands must be NCHW for convolution (fwd + bwd) and bilinear upsample
/// (fwd + bwd). With ACL_FORMAT_ND everywhere the stand-in, like CANN, answers 161002.
#[test]
fn conv_and_upsample_operands_are_nchw() {
    assert_eq!(format_for_rank(2), ACL_FORMAT_ND as aclFormat);
    assert_eq!(format_for_rank(3), ACL_FORMAT_NCL as aclFormat);
    assert_eq!(format_for_rank(4), ACL_FORMAT_NCHW as aclFormat);
    assert_eq!(format_for_rank(5), ACL_FORMAT_NCDHW as aclFormat);
    let dev = rt().device(0).unwrap();
    let stream = dev.stream().unwrap();
    conv_sum_of_squares(&stream).expect("aclnnConvolution with NCHW operands");

    let ops = Ops::new(&stream);
    let (x, w) = (
        dev.upload(&data(2 * 9, 3)).unwrap(),
        dev.upload(&data(2 * 2 * 4, 4)).unwrap(),
    );
    let dy = dev.upload(&data(2 * 4, 5)).unwrap();
    let (mut gx, mut gw) = (
        dev.alloc_elems::<f32>(18).unwrap(),
        dev.alloc_elems::<f32>(16).unwrap(),
    );
    ops.conv2d_backward(
        &f32_in(&dy, &[1, 2, 2, 2]),
        &f32_in(&x, &[1, 2, 3, 3]),
        &f32_in(&w, &[2, 2, 2, 2]),
        &[],
        [1, 1],
        [0, 0],
        [1, 1],
        1,
        Some(&f32_out(&mut gx, &[1, 2, 3, 3])),
        Some(&f32_out(&mut gw, &[2, 2, 2, 2])),
        None,
    )
    .expect("aclnnConvolutionBackward with NCHW operands");

    let up2 = |x: &TensorArg, out: &TensorArg| ops.upsample_bilinear2d(x, false, (2.0, 2.0), out);
    let up2_back =
        |g: &TensorArg, gi: &TensorArg| ops.upsample_bilinear2d_backward(g, false, (2.0, 2.0), gi);
    let src = dev.upload(&data(2 * 3 * 4, 6)).unwrap();
    let mut up = dev.alloc_elems::<f32>(2 * 6 * 8).unwrap();
    up2(
        &f32_in(&src, &[1, 2, 3, 4]),
        &f32_out(&mut up, &[1, 2, 6, 8]),
    )
    .expect("aclnnUpsampleBilinear2d with NCHW operands");
    let mut back = dev.alloc_elems::<f32>(24).unwrap();
    up2_back(
        &f32_in(&up, &[1, 2, 6, 8]),
        &f32_out(&mut back, &[1, 2, 3, 4]),
    )
    .expect("aclnnUpsampleBilinear2dBackward with an NCHW gradOut");
    stream.synchronize().unwrap();
}

/// Bug 4: a CANN that ships the op API split into `libopapi_{math,nn,cv,transformer}.so`
/// (no `libopapi.so`) still resolves every operator.
#[test]
fn split_opapi_libraries_are_searched() {
    let dir = link_standin_as(
        "medsam-ffi-split-opapi",
        &[
            "libascendcl.so",
            "libnnopbase.so",
            "libopapi_nn.so",
            "libopapi_math.so",
        ],
    );
    let rt = AscendRuntime::open_dir(&dir).expect("open");
    let api = rt
        .opapi
        .as_ref()
        .expect("op API found under the split names");
    assert!(api.Convolution.is_some() && api.Matmul.is_some() && api.Add.is_some());
    assert!(
        rt.loaded.iter().any(|p| p.ends_with("libopapi_nn.so")),
        "{:?}",
        rt.loaded
    );
}

/// Bug 5: before CANN 8.0 (or when the version cannot be read) the convolution's first
/// phase has another arity: refused before the call, with the version in the message.
#[test]
fn convolution_needs_cann_8() {
    let dev = rt().device(0).unwrap();
    let stream = dev.stream().unwrap();
    for (v, says) in [
        (Some("7.0.0"), "CANN 7.0.0"),
        (Some(""), "version is unknown"),
    ] {
        set_cann_version(v);
        let e = conv_sum_of_squares(&stream).unwrap_err();
        set_cann_version(None);
        assert!(matches!(e, AscendError::Unsupported(_)), "{v:?}: {e}");
        assert!(e.to_string().contains(says), "{e}");
    }
    assert_eq!(rt().cann_version().unwrap().major, 8);
    conv_sum_of_squares(&stream).expect("CANN 8.1 again");
}

/// Bug 6: fp32 with cubeMathType 0 (KEEP_DTYPE) is unsupported on Atlas training (910A) and
/// inference SoCs; the type is chosen per SoC and dtype.
#[test]
fn cube_math_type_follows_the_soc() {
    use CubePrecision::*;
    let f32_ = ACL_FLOAT as aclDataType;
    for (soc, exact, reduced) in [
        ("Ascend910B1", 0, 1),
        ("Ascend910B4-1", 0, 1),
        ("Ascend910_9391", 0, 1),
        ("Ascend910A", 1, 1),
        ("Ascend910ProB", 1, 1),
        ("Ascend910B", 1, 1),
        ("Ascend310P3", 1, 1),
    ] {
        assert_eq!(cube_math_type(Some(soc), f32_, Exact), exact, "{soc}");
        assert_eq!(cube_math_type(Some(soc), f32_, Reduced), reduced, "{soc}");
        assert_eq!(
            cube_math_type(Some(soc), ACL_FLOAT16 as aclDataType, Exact),
            0,
            "{soc}"
        );
    }
    let dev = rt().device(0).unwrap();
    let stream = dev.stream().unwrap();
    let (a, b) = (
        dev.upload(&data(6, 1)).unwrap(),
        dev.upload(&data(12, 2)).unwrap(),
    );
    let mut c = dev.alloc_elems::<f32>(8).unwrap();
    for soc in ["Ascend910A", "Ascend310P3", "Ascend910B2"] {
        set_soc(Some(soc));
        assert_eq!(rt().soc_name().as_deref(), Some(soc));
        let r = Ops::new(&stream).matmul(
            &f32_in(&a, &[2, 3]),
            &f32_in(&b, &[3, 4]),
            &f32_out(&mut c, &[2, 4]),
        );
        let conv = conv_sum_of_squares(&stream);
        set_soc(None);
        r.unwrap_or_else(|e| panic!("matmul on {soc}: {e}"));
        conv.unwrap_or_else(|e| panic!("conv on {soc}: {e}"));
    }
    stream.synchronize().unwrap();
}

/// Bug 7: no aclop fallback; a runtime without the op API names the aclnn function missing.
#[test]
fn a_missing_operator_is_named() {
    let dir = link_standin_as(
        "medsam-ffi-no-opapi",
        &["libascendcl.so", "libnnopbase.so", "libacl_op_compiler.so"],
    );
    let rt = AscendRuntime::open_dir(&dir).unwrap();
    assert!(rt.opapi.is_none());
    // The stand-in's state is process-wide: a second runtime over the same library is fine
    // (aclInit answers REPEAT_INITIALIZE, which is accepted).
    let rt = rt.into_static().unwrap();
    let dev = rt.device(0).unwrap();
    let stream = dev.stream().unwrap();
    let e = conv_sum_of_squares(&stream).unwrap_err();
    assert!(
        matches!(
            e,
            AscendError::MissingSymbol {
                func: "aclnnConvolution",
                ..
            }
        ),
        "{e}"
    );
}

/// Bug 8 (executor): phase 1 succeeded, the workspace allocation failed: the executor that
/// phase 2 would have consumed is released (`aclDestroyAclOpExecutor`), not leaked.
#[test]
fn executor_released_when_the_workspace_cannot_be_allocated() {
    let dev = rt().device(0).unwrap();
    let stream = dev.stream().unwrap();
    let set_ws: extern "C" fn(u64) = knob("standin_set_workspace_request");
    let live: extern "C" fn() -> u64 = knob("standin_live_executors");
    let (a, b) = (
        dev.upload(&data(6, 1)).unwrap(),
        dev.upload(&data(12, 2)).unwrap(),
    );
    let mut c = dev.alloc_elems::<f32>(8).unwrap();
    let before = live();
    set_ws(1 << 42);
    let r = Ops::new(&stream).matmul(
        &f32_in(&a, &[2, 3]),
        &f32_in(&b, &[3, 4]),
        &f32_out(&mut c, &[2, 4]),
    );
    set_ws(0);
    assert!(r.is_err(), "a 4 TiB workspace cannot be allocated");
    assert_eq!(live(), before, "executor leaked: {}", r.unwrap_err());
}

/// Bug 8 (HCCL): reducing collectives of f64 / u8 are refused before HCCL is called.
#[test]
fn hccl_reductions_refuse_f64_and_u8() {
    let dev = rt().device(0).unwrap();
    let stream = dev.stream().unwrap();
    let comm = HcclComm::init(&dev, 0, 1, |_| Ok(())).expect("one-rank communicator");
    let buf = dev.alloc(64).unwrap();
    for e in [
        comm.all_reduce_sum_inplace::<f64>(&buf, 4, &stream)
            .unwrap_err(),
        comm.all_reduce_sum_inplace::<u8>(&buf, 4, &stream)
            .unwrap_err(),
    ] {
        assert!(matches!(e, AscendError::Unsupported(_)), "{e}");
        assert!(e.to_string().contains("HcclAllReduce"), "{e}");
    }
    comm.all_reduce_sum_inplace::<f32>(&buf, 4, &stream)
        .unwrap();
    stream.synchronize().unwrap();
}

/// The stand-in refuses what CANN refuses: destroyed descriptors and streams, host pointers
/// as tensor data, a second phase 2 on one executor, a workspace smaller than phase 1 asked.
#[test]
fn standin_refuses_what_cann_refuses() {
    let rt = rt();
    let nn = rt.nnopbase.as_ref().unwrap();
    let api = rt.opapi.as_ref().unwrap();
    let dev = rt.device(0).unwrap();
    let stream = dev.stream().unwrap();
    let x = dev.upload(&data(8, 1)).unwrap();
    let y = dev.alloc_elems::<f32>(8).unwrap();
    // A raw f32 ND descriptor of `dims` with `strides` over `p`.
    let make = |dims: &[i64], strides: &[i64], p: *mut std::ffi::c_void| unsafe {
        let (d, s, n) = (dims.as_ptr(), strides.as_ptr(), dims.len() as u64);
        (nn.aclCreateTensor.unwrap())(d, n, ACL_FLOAT as _, s, 0, ACL_FORMAT_ND as _, d, n, p)
    };
    let mk = |p| make(&[8], &[1], p);
    let (p1, p2) = api.Relu.unwrap();
    let (tx, ty) = (mk(x.as_ptr()), mk(y.as_ptr()));
    let (mut ws, mut ex) = (0u64, std::ptr::null_mut());
    // Executor single use.
    assert_eq!(unsafe { p1(tx, ty, &mut ws, &mut ex) }, 0);
    assert_eq!(ws, 0);
    assert_eq!(unsafe { p2(std::ptr::null_mut(), 0, ex, stream.raw()) }, 0);
    assert_eq!(
        unsafe { p2(std::ptr::null_mut(), 0, ex, stream.raw()) },
        161002
    );
    // Destroyed descriptor.
    unsafe { (nn.aclDestroyTensor.unwrap())(tx) };
    assert_eq!(unsafe { p1(tx, ty, &mut ws, &mut ex) }, 161002);
    // Host memory as tensor data.
    let mut host = vec![0f32; 8];
    let th = mk(host.as_mut_ptr().cast());
    assert_eq!(unsafe { p1(th, ty, &mut ws, &mut ex) }, 161002);
    // Workspace smaller than asked (matmul asks for one).
    let (mp1, mp2) = api.Matmul.unwrap();
    let mk2 = |p| make(&[2, 2], &[2, 1], p);
    let (ta, to) = (mk2(x.as_ptr()), mk2(y.as_ptr()));
    assert_eq!(unsafe { mp1(ta, ta, to, 0, &mut ws, &mut ex) }, 0);
    assert!(ws > 0);
    let small = dev.alloc(ws as usize / 2).unwrap();
    assert_eq!(
        unsafe { mp2(small.as_ptr(), ws / 2, ex, stream.raw()) },
        161002
    );
    for t in [ty, th, ta, to] {
        unsafe { (nn.aclDestroyTensor.unwrap())(t) };
    }
    stream.synchronize().unwrap();
    // A destroyed stream.
    let raw = {
        let s = dev.stream().unwrap();
        s.raw()
    };
    let e = rt.check("aclrtSynchronizeStream", unsafe {
        (rt.acl.aclrtSynchronizeStream.as_ref().unwrap())(raw)
    });
    assert!(
        matches!(e, Err(AscendError::Acl { code: 107000, .. })),
        "{e:?}"
    );
}

/// Bug 2: kernel arguments reach the runtime the documented way — `aclrtKernelArgs*` +
/// `aclrtLaunchKernelWithConfig`, or, where that API is not supported, an argument block in
/// device memory for `aclrtLaunchKernel` (which refuses a host pointer as `argsData`).
#[test]
fn custom_kernel_arguments_are_passed_as_documented() {
    let dir = lib_dir();
    let desc = dir.join("medsam_ascend_kernels.standin");
    std::fs::write(
        &desc,
        "medsam-standin-kernels 1\nrel_pos_attention\nlayer_norm2d\n",
    )
    .unwrap();
    let dev = rt().device(0).unwrap();
    let stream = dev.stream().unwrap();
    let kernels = CustomKernels::load(&dev, &desc).unwrap();
    let (n, c, hw) = (2usize, 5usize, 7usize);
    let shape = Ln2dShape {
        n: n as u32,
        c: c as u32,
        hw: hw as u32,
        eps: 1e-6,
    };
    let hx = data(n * c * hw, 9);
    let x = dev.upload(&hx).unwrap();
    let (g, b) = (
        dev.upload(&vec![1f32; c]).unwrap(),
        dev.upload(&vec![0f32; c]).unwrap(),
    );
    let args_api: extern "C" fn(bool) = knob("standin_set_kernel_args_api");
    for api in [true, false] {
        args_api(api);
        let mut y = dev.alloc_elems::<f32>(n * c * hw).unwrap();
        let mut mean = dev.alloc_elems::<f32>(n * hw).unwrap();
        let mut rstd = dev.alloc_elems::<f32>(n * hw).unwrap();
        let r = kernels.layer_norm2d(&stream, &shape, &x, &g, &b, &mut y, &mut mean, &mut rstd);
        args_api(true);
        r.unwrap_or_else(|e| panic!("layer_norm2d (args API {api}): {e}"));
        let got = y.read::<f32>(&stream, n * c * hw).unwrap();
        let mut want = vec![0f32; n * c * hw];
        for i in 0..n {
            for p in 0..hw {
                let col: Vec<f64> = (0..c).map(|ch| hx[(i * c + ch) * hw + p] as f64).collect();
                let m = col.iter().sum::<f64>() / c as f64;
                let v = col.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / c as f64;
                for ch in 0..c {
                    want[(i * c + ch) * hw + p] = ((col[ch] - m) / (v + 1e-6).sqrt()) as f32;
                }
            }
        }
        close(&format!("layer_norm2d (args API {api})"), &got, &want, 1e-4);
    }
}
