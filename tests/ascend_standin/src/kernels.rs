//! Custom-kernel launch (`aclrtBinaryLoadFromFile`, `aclrtBinaryGetFunction`,
//! `aclrtLaunchKernel`, `aclrtBinaryUnLoad`; signatures of `acl/acl_rt.h`).
//!
//! The stand-in cannot execute device code. A "binary" here is a small text descriptor:
//! ```text
//! medsam-standin-kernels 1
//! rel_pos_attention
//! layer_norm2d
//! ```
//! naming the kernels it provides. A launch of a known kernel decodes the argument block
//! (packed 8-byte `GM_ADDR`s, the last pointing at the tiling struct in device memory),
//! checks every address against the tracked device allocations, and enqueues on the stream the
//! host reference of the kernel (`ascend_tiled.rs`, the same tiling and recurrences as
//! `kernels/ascend/*.cpp`), running blocks `0..numBlocks` in order. A real binary loaded here
//! is rejected (it is not a descriptor).

use super::ascend_tiled::{self as tiled, LayerNorm2dTiling, RelPosAttnTiling};
use super::*;

const MAGIC: &str = "medsam-standin-kernels 1";

struct Binary {
    kernels: Vec<String>,
}

struct Func {
    bin: usize,
    name: String,
}

static BINARIES: Mutex<BTreeMap<usize, ()>> = Mutex::new(BTreeMap::new());
static FUNCS: Mutex<BTreeMap<usize, ()>> = Mutex::new(BTreeMap::new());

#[no_mangle]
pub unsafe extern "C" fn aclrtBinaryLoadFromFile(
    path: *const c_char,
    _options: *mut c_void,
    handle: *mut *mut c_void,
) -> i32 {
    if path.is_null() || handle.is_null() {
        return fail(ACL_ERROR_INVALID_PARAM, "aclrtBinaryLoadFromFile: NULL");
    }
    let p = CStr::from_ptr(path).to_string_lossy().into_owned();
    let text = match std::fs::read(&p) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => {
            return fail(
                ACL_ERROR_RT_PARAM_INVALID,
                format!("aclrtBinaryLoadFromFile: cannot read {p}: {e}"),
            )
        }
    };
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    if lines.next() != Some(MAGIC) {
        return fail(
            ACL_ERROR_RT_PARAM_INVALID,
            format!(
                "aclrtBinaryLoadFromFile: {p} is not a stand-in kernel descriptor (\"{MAGIC}\")"
            ),
        );
    }
    let b = Box::into_raw(Box::new(Binary {
        kernels: lines.map(String::from).collect(),
    }));
    lock(&BINARIES).insert(b as usize, ());
    *handle = b.cast();
    OK
}

#[no_mangle]
pub unsafe extern "C" fn aclrtBinaryGetFunction(
    bin: *mut c_void,
    name: *const c_char,
    func: *mut *mut c_void,
) -> i32 {
    if name.is_null() || func.is_null() || !lock(&BINARIES).contains_key(&(bin as usize)) {
        return fail(
            ACL_ERROR_INVALID_PARAM,
            "aclrtBinaryGetFunction: unknown binary handle or NULL",
        );
    }
    let n = CStr::from_ptr(name).to_string_lossy().into_owned();
    let b = &*(bin as *const Binary);
    if !b.kernels.contains(&n) {
        return fail(
            ACL_ERROR_RT_PARAM_INVALID,
            format!("aclrtBinaryGetFunction: no kernel {n:?} in the binary"),
        );
    }
    let f = Box::into_raw(Box::new(Func {
        bin: bin as usize,
        name: n,
    }));
    lock(&FUNCS).insert(f as usize, ());
    *func = f.cast();
    OK
}

#[no_mangle]
pub unsafe extern "C" fn aclrtBinaryUnLoad(bin: *mut c_void) -> i32 {
    if lock(&BINARIES).remove(&(bin as usize)).is_none() {
        return fail(ACL_ERROR_INVALID_PARAM, "aclrtBinaryUnLoad: unknown handle");
    }
    // Function handles of the binary become invalid.
    let mut funcs = lock(&FUNCS);
    let dead: Vec<usize> = funcs
        .keys()
        .copied()
        .filter(|&f| (*(f as *const Func)).bin == bin as usize)
        .collect();
    for f in dead {
        funcs.remove(&f);
        drop(Box::from_raw(f as *mut Func));
    }
    drop(Box::from_raw(bin as *mut Binary));
    OK
}

/// An operand: `elems` f32 at a device address (0 allowed only when `elems == 0`).
fn operand(what: &str, addr: u64, elems: usize) -> Result<(usize, usize), (i32, String)> {
    if elems == 0 {
        return Ok((addr as usize, 0));
    }
    if !is_device(addr as usize, elems * 4) {
        return Err((
            ACL_ERROR_RT_PARAM_INVALID,
            format!(
                "kernel operand {what}: {addr:#x} + {} bytes is not device memory",
                elems * 4
            ),
        ));
    }
    Ok((addr as usize, elems))
}

unsafe fn ro<'a>(o: (usize, usize)) -> &'a [f32] {
    if o.1 == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(o.0 as *const f32, o.1)
    }
}
unsafe fn rw<'a>(o: (usize, usize)) -> &'a mut [f32] {
    if o.1 == 0 {
        &mut []
    } else {
        std::slice::from_raw_parts_mut(o.0 as *mut f32, o.1)
    }
}

fn tiling_bytes(addr: u64, n: usize) -> Result<Vec<u8>, (i32, String)> {
    if !is_device(addr as usize, n) {
        return Err((
            ACL_ERROR_RT_PARAM_INVALID,
            format!("kernel tiling: {addr:#x} + {n} bytes is not device memory"),
        ));
    }
    Ok(unsafe { std::slice::from_raw_parts(addr as *const u8, n) }.to_vec())
}

/// What a launch needs of a kernel's tiling struct (`kernels/src/ascend_tiled.rs`).
trait Tiling: Sized {
    const KERNEL: &'static str;
    /// Size of the struct in device memory.
    const SIZE: usize;
    /// Operand names, in the order of the argument block (the tiling address follows them).
    const OPERANDS: &'static [&'static str];
    fn decode(b: &[u8]) -> Option<Self>;
    fn check(&self) -> Result<(), String>;
    fn operand_lens(&self) -> Vec<usize>;
}

macro_rules! tiling {
    ($t:ty, $kernel:literal, $operands:expr) => {
        impl Tiling for $t {
            const KERNEL: &'static str = $kernel;
            const SIZE: usize = <$t>::BYTES;
            const OPERANDS: &'static [&'static str] = &$operands;
            fn decode(b: &[u8]) -> Option<Self> {
                <$t>::from_bytes(b)
            }
            fn check(&self) -> Result<(), String> {
                self.validate()
            }
            fn operand_lens(&self) -> Vec<usize> {
                self.lens().to_vec()
            }
        }
    };
}
tiling!(
    RelPosAttnTiling,
    "rel_pos_attention",
    ["q", "k", "v", "rel_h", "rel_w", "out", "lse"]
);
tiling!(
    LayerNorm2dTiling,
    "layer_norm2d",
    ["x", "gamma", "beta", "y", "mean", "rstd"]
);

/// The tiling of a launch (read from device memory at the address after the operands, then
/// validated) and its operand ranges, each checked against the tracked device allocations.
fn decode_launch<T: Tiling>(a: &[u64]) -> Result<(T, Vec<(usize, usize)>), (i32, String)> {
    let n = T::OPERANDS.len();
    let bytes = tiling_bytes(a[n], T::SIZE)?;
    let t = T::decode(&bytes).expect("length checked");
    t.check().map_err(|e| {
        (
            ACL_ERROR_RT_PARAM_INVALID,
            format!("{} tiling: {e}", T::KERNEL),
        )
    })?;
    let lens = t.operand_lens();
    let ops = (0..n)
        .map(|i| operand(T::OPERANDS[i], a[i], lens[i]))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((t, ops))
}

fn run_attention(a: &[u64], blocks: u32) -> Result<(), (i32, String)> {
    let (t, ops) = decode_launch::<RelPosAttnTiling>(a)?;
    // SAFETY: each range was checked to lie in a live device allocation; the kernel's
    // outputs do not overlap its inputs (as on the device, overlap is the caller's bug).
    unsafe {
        let gm = tiled::AttnGm {
            q: ro(ops[0]),
            k: ro(ops[1]),
            v: ro(ops[2]),
            rel_h: ro(ops[3]),
            rel_w: ro(ops[4]),
        };
        let (out, lse) = (rw(ops[5]), rw(ops[6]));
        // GetBlockNum() is the number of blocks launched.
        let t = RelPosAttnTiling {
            block_dim: blocks,
            ..t
        };
        for b in 0..blocks {
            tiled::rel_pos_attention_block(&t, b, &gm, out, lse);
        }
    }
    Ok(())
}

fn run_layer_norm2d(a: &[u64], blocks: u32) -> Result<(), (i32, String)> {
    let (t, ops) = decode_launch::<LayerNorm2dTiling>(a)?;
    // SAFETY: as in run_attention.
    unsafe {
        let gm = tiled::Ln2dGm {
            x: ro(ops[0]),
            gamma: ro(ops[1]),
            beta: ro(ops[2]),
        };
        let mut o = tiled::Ln2dOut {
            y: rw(ops[3]),
            mean: rw(ops[4]),
            rstd: rw(ops[5]),
        };
        let t = LayerNorm2dTiling {
            block_dim: blocks,
            ..t
        };
        for b in 0..blocks {
            tiled::layer_norm2d_block(&t, b, &gm, &mut o);
        }
    }
    Ok(())
}

/// Number of 8-byte GM_ADDR arguments of a kernel the stand-in can execute.
fn kernel_nargs(func: *mut c_void, api: &str) -> Result<(String, usize), i32> {
    if !lock(&FUNCS).contains_key(&(func as usize)) {
        return Err(fail(
            ACL_ERROR_INVALID_PARAM,
            format!("{api}: unknown function handle"),
        ));
    }
    let name = unsafe { (*(func as *const Func)).name.clone() };
    match name.as_str() {
        "rel_pos_attention" => Ok((name, 8)),
        "layer_norm2d" => Ok((name, 7)),
        other => Err(fail(
            ACL_ERROR_RT_PARAM_INVALID,
            format!("{api}: the stand-in cannot execute kernel {other:?}"),
        )),
    }
}

fn check_block(api: &str, name: &str, nargs: usize, size: usize, num_blocks: u32) -> i32 {
    if size != nargs * 8 || num_blocks == 0 {
        return fail(
            ACL_ERROR_RT_PARAM_INVALID,
            format!(
                "{api} {name}: {size}-byte argument block (expected {} = {nargs} GM_ADDR), \
                 {num_blocks} blocks",
                nargs * 8
            ),
        );
    }
    OK
}

fn run_kernel(name: &str, raw: &[u8], num_blocks: u32) -> Result<(), (i32, String)> {
    let a: Vec<u64> = raw
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
        .collect();
    match name {
        "rel_pos_attention" => run_attention(&a, num_blocks),
        _ => run_layer_norm2d(&a, num_blocks),
    }
}

/// Rule (hiascend `aclrtLaunchKernel` docs, 80RC1 … 900): `argsData` is the address of
/// **device** memory holding the arguments; a host pointer is refused. The block is read when
/// the kernel runs (at stream sync), so it must stay alive until then.
#[no_mangle]
pub unsafe extern "C" fn aclrtLaunchKernel(
    func: *mut c_void,
    num_blocks: u32,
    args: *const c_void,
    args_size: usize,
    stream: *mut c_void,
) -> i32 {
    const API: &str = "aclrtLaunchKernel";
    let (name, nargs) = match kernel_nargs(func, API) {
        Ok(v) => v,
        Err(c) => return c,
    };
    let r = check_block(API, &name, nargs, args_size, num_blocks);
    if r != OK {
        return r;
    }
    if args.is_null() || !is_device(args as usize, args_size) {
        return fail(
            ACL_ERROR_INVALID_PARAM,
            format!("{API} {name}: argsData {args:p} is not device memory from aclrtMalloc"),
        );
    }
    with_state(|s| s.kernel_launches += 1);
    let a = Addr(args as usize);
    enqueue(
        stream,
        Box::new(move || {
            let a = a;
            if !is_device(a.0, args_size) {
                return Err((
                    ACL_ERROR_RT_PARAM_INVALID,
                    format!("{name}: argument block freed before the kernel ran"),
                ));
            }
            let raw = std::slice::from_raw_parts(a.0 as *const u8, args_size).to_vec();
            run_kernel(&name, &raw, num_blocks)
        }),
    )
}

/// An `aclrtArgsHandle`: host bytes appended by `aclrtKernelArgsAppend`, copied by the runtime
/// at launch (acl_rt.h, hicann/runtime `0_launch_kernel` sample).
struct ArgsHandle {
    func: usize,
    bytes: Vec<u8>,
    finalized: bool,
}

#[no_mangle]
pub unsafe extern "C" fn aclrtKernelArgsInit(func: *mut c_void, handle: *mut *mut c_void) -> i32 {
    if !KERNEL_ARGS_API.with(|k| k.get()) {
        return fail(
            ACL_ERROR_RT_FEATURE_NOT_SUPPORT,
            "aclrtKernelArgsInit: not supported (emulated)",
        );
    }
    if let Err(c) = kernel_nargs(func, "aclrtKernelArgsInit") {
        return c;
    }
    if handle.is_null() {
        return fail(ACL_ERROR_INVALID_PARAM, "aclrtKernelArgsInit: NULL");
    }
    *handle = Box::into_raw(Box::new(ArgsHandle {
        func: func as usize,
        bytes: Vec::new(),
        finalized: false,
    }))
    .cast();
    OK
}

#[no_mangle]
pub unsafe extern "C" fn aclrtKernelArgsAppend(
    handle: *mut c_void,
    param: *mut c_void,
    size: usize,
    param_handle: *mut *mut c_void,
) -> i32 {
    if handle.is_null() || param.is_null() || param_handle.is_null() {
        return fail(ACL_ERROR_INVALID_PARAM, "aclrtKernelArgsAppend: NULL");
    }
    let h = &mut *(handle as *mut ArgsHandle);
    if h.finalized {
        return fail(
            ACL_ERROR_INVALID_PARAM,
            "aclrtKernelArgsAppend: handle already finalized",
        );
    }
    h.bytes
        .extend_from_slice(std::slice::from_raw_parts(param as *const u8, size));
    *param_handle = param;
    OK
}

#[no_mangle]
pub unsafe extern "C" fn aclrtKernelArgsFinalize(handle: *mut c_void) -> i32 {
    if handle.is_null() {
        return fail(ACL_ERROR_INVALID_PARAM, "aclrtKernelArgsFinalize: NULL");
    }
    (*(handle as *mut ArgsHandle)).finalized = true;
    OK
}

#[no_mangle]
pub unsafe extern "C" fn aclrtLaunchKernelWithConfig(
    func: *mut c_void,
    num_blocks: u32,
    stream: *mut c_void,
    _cfg: *mut c_void,
    handle: *mut c_void,
    _reserve: *mut c_void,
) -> i32 {
    const API: &str = "aclrtLaunchKernelWithConfig";
    let (name, nargs) = match kernel_nargs(func, API) {
        Ok(v) => v,
        Err(c) => return c,
    };
    if handle.is_null() {
        return fail(ACL_ERROR_INVALID_PARAM, format!("{API}: NULL args handle"));
    }
    let h = &*(handle as *const ArgsHandle);
    if !h.finalized || h.func != func as usize {
        return fail(
            ACL_ERROR_INVALID_PARAM,
            format!("{API} {name}: args handle not finalized or of another function"),
        );
    }
    let r = check_block(API, &name, nargs, h.bytes.len(), num_blocks);
    if r != OK {
        return r;
    }
    // The runtime copies the host block at launch: the caller may reuse it right away.
    let raw = h.bytes.clone();
    with_state(|s| s.kernel_launches += 1);
    enqueue(
        stream,
        Box::new(move || run_kernel(&name, &raw, num_blocks)),
    )
}
