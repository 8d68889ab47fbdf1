//! Dynamic int8 quantization of linear layers for inference (`--precision int8`), as PyTorch's
//! `quantize_dynamic` and ONNX Runtime do it: weights per output channel (symmetric i8),
//! activations per token at every call (u8 with a zero point), i32 dot products, f32 bias and
//! activation — except that the activations are first centred on the call's mean token, whose
//! product goes through the f32 weights (on the full ViT-B parity model this took the mask IoU
//! against f32 from 0.984 to 0.9916). The arithmetic is [`medsam_kernels::gemm::int8`].
//!
//! Only linear layers (`Tensor::linear`, `linear_act`, `linear_fused`) are quantized — by default
//! every kind (see `layer_selected`), but only those large enough for int8 to beat the float
//! GEMM (see `size_pays`) — on the CPU and when nothing records a gradient.
//! The linear layers left out run in bf16 where this CPU's bf16 dot products beat f32
//! (`unquantized_in_bf16`), else f32, and so do the attention products; convolutions and norms
//! stay f32, as in PyTorch's dynamic quantization. A weight is quantized the first time it runs under
//! [`autocast_int8`] and the result is kept, keyed by the weight's buffer, for as long as that
//! buffer lives — for a loaded model, once per layer for the model's life. The cache does not
//! notice in-place updates of a weight (training); [`clear_int8_cache`] forgets everything.

use crate::backend::Storage;
use crate::error::Result;
use crate::tensor::Tensor;
use medsam_kernels::gemm::int8::{self, Int8Weights};
use medsam_kernels::gemm::Epilogue;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

thread_local! {
    static AUTOCAST_INT8: Cell<bool> = const { Cell::new(false) };
    static EVERY_SIZE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with linear layers in dynamically quantized int8 (see the module doc).
pub fn autocast_int8<T>(enabled: bool, f: impl FnOnce() -> T) -> T {
    crate::autograd::with_flag(&AUTOCAST_INT8, enabled, f)
}

/// Whether linear layers on this thread currently run in int8.
pub fn int8_enabled() -> bool {
    AUTOCAST_INT8.with(|c| c.get())
}

/// Runs `f` with the size rule of [`autocast_int8`] switched off: every layer of a selected kind
/// is quantized whatever its size, and the others stay f32 (for tests of the int8 arithmetic on
/// small models, whose layers the size rule would leave to bf16 or f32).
pub fn int8_every_size<T>(f: impl FnOnce() -> T) -> T {
    crate::autograd::with_flag(&EVERY_SIZE, true, f)
}

fn every_size() -> bool {
    EVERY_SIZE.with(|c| c.get())
}

/// Below this k (input features) a layer stays in float. Where this CPU has native bf16 dot
/// products ([`unquantized_in_bf16`]) each output then sums too few products for the int8
/// kernel's per-call and per-tile costs (quantizing the activations, dequantizing the i32 tile)
/// to pay, and bf16 was as fast or faster (AMD Zen 4, one thread: (4096, k=192, n=768) int8 15 ms
/// vs bf16 11 ms, (17689, 128, 384) 31 vs 18; from k = 320 int8 wins: (4900, 320, 960) 26 vs 31,
/// (4096, 768, 3072) 120 vs 208). Where the rest runs in f32, int8 would beat f32 below this k
/// too ((16384, 96, 288) 13 vs 19 ms), but accuracy decides there: on MedSAM2's parity input
/// (tests/models/sam2_parity.rs, `MEDSAM_INT8_REST=f32`) quantizing Hiera's k = 96/192 layers too
/// took the mask IoU vs f32 from 0.978 to 0.968.
const MIN_K: usize = 256;

/// Below this n (output features) a layer stays f32 when the alternative is the f32 GEMM:
/// quantizing the `m × k` activations costs as much as an `n`-column product saves
/// ((16384, k=96, n=192) int8 16 ms vs f32 9 ms; (16384, 96, 288) 13 vs 19). Against bf16 the
/// same holds for the narrow MLP fc2 of Hiera's first two stages ((16384, 384, 96), (4096, 768,
/// 192)): quantizing them too made MedSAM2's int8 encoder slower, not faster (per-call CPU time
/// vs f32 at one thread, AMD Zen 4: median 0.76 against 0.64 without them).
const MIN_N: usize = 256;

/// Whether int8 is expected to beat the precision the layer would otherwise run in (and, for
/// small k, to keep its accuracy).
fn size_pays(n: usize, k: usize) -> bool {
    n >= MIN_N && k >= MIN_K
}

/// A cached quantization: valid while `storage` is the same live buffer.
struct Entry {
    storage: Weak<Storage>,
    shape: (usize, usize),
    weights: Arc<Int8Weights>,
}

/// Keyed by (buffer address, element offset). A `Weak` keeps the allocation's address from
/// being reused while the entry exists, so a live upgrade that points at the same buffer is
/// the same weight.
type Cache = HashMap<(usize, usize), Entry>;

fn cache() -> &'static Mutex<Cache> {
    use std::sync::OnceLock;
    static C: OnceLock<Mutex<Cache>> = OnceLock::new();
    C.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Forgets every cached quantized weight.
pub fn clear_int8_cache() {
    if let Ok(mut c) = cache().lock() {
        c.clear();
    }
}

/// The quantized form of a dense `[n, k]` CPU weight, computed on first use.
fn quantized(weight: &Tensor, n: usize, k: usize) -> Result<Arc<Int8Weights>> {
    let arc = weight.storage_arc();
    let key = (Arc::as_ptr(arc) as usize, weight.offset());
    let lookup = |c: &Cache| {
        c.get(&key).and_then(|e| {
            let live = e.storage.upgrade()?;
            (Arc::ptr_eq(&live, arc) && e.shape == (n, k)).then(|| e.weights.clone())
        })
    };
    if let Some(w) = cache().lock().ok().and_then(|c| lookup(&c)) {
        return Ok(w);
    }
    let data = &weight.storage().cpu()?[weight.offset()..weight.offset() + n * k];
    let w = Arc::new(Int8Weights::quantize(data, n, k));
    if let Ok(mut c) = cache().lock() {
        c.retain(|_, e| e.storage.strong_count() > 0);
        c.insert(
            key,
            Entry {
                storage: Arc::downgrade(arc),
                shape: (n, k),
                weights: w.clone(),
            },
        );
    }
    Ok(w)
}

/// Which layers to quantize, by shape (among those `size_pays` admits). Default: all — attention
/// qkv and MLP fc1 (`n > k`, "expand"), the attention output projection (`n = k`, "square") and
/// MLP fc2 (`n < k`, "reduce", reading GELU outputs with long tails). Before the activations were
/// centred, fc2 and proj cost too much accuracy (all layers: mask IoU 0.983 vs f32 on a real
/// LiteMedSAM slice) and only the expand layers were quantized. Measured with centring, the rest
/// in bf16, AMD Zen 4 (mask IoU vs f32; int8/f32 per-call CPU time at one thread, median of 3–7
/// interleaved rounds on a loaded machine, good to about ±0.05):
///
/// | rule            | ViT-B IoU | Lite min IoU | MedSAM2 IoU | MedSAM2 time | ViT-B time |
/// |-----------------|-----------|--------------|-------------|--------------|------------|
/// | expand          | 0.9916    | 0.9948       | 0.9918      | 0.64         | 0.59       |
/// | expand,square   | 0.9944    | 0.9950       | 0.9913      | 0.66         | 0.49       |
/// | expand,reduce   | 0.9908    | 0.9948       | 0.9921      | 0.76         | 0.50       |
/// | all, n ≥ 256    | 0.9941    | 0.9963       | 0.9916      | 0.61         | 0.45       |
///
/// (ViT-B: tests/models/vit_b_parity.rs; Lite: the three boxes of tests/models/lite_real.rs;
/// MedSAM2: the returned mask in tests/models/sam2_parity.rs. Without the n ≥ 256 floor, which
/// leaves Hiera's two narrow fc2 in bf16, "all" gave MedSAM2 IoU 0.9895 at 0.72. LiteMedSAM's
/// time: expand 0.79, all 0.82 — its layers are small, few are worth quantizing.)
/// `MEDSAM_INT8_LAYERS` overrides this with a comma list of `expand`, `square`, `reduce` or
/// `all`, each optionally `:K` for layers with at least K input features (`expand,reduce:1536`).
fn layer_selected(n: usize, k: usize) -> bool {
    use std::sync::OnceLock;
    static SEL: OnceLock<String> = OnceLock::new();
    let sel = SEL.get_or_init(|| {
        std::env::var("MEDSAM_INT8_LAYERS").unwrap_or_else(|_| DEFAULT_LAYERS.to_string())
    });
    rule_selects(sel, n, k)
}

/// The layers quantized when `MEDSAM_INT8_LAYERS` is not set.
const DEFAULT_LAYERS: &str = "all";

/// Whether the rule `sel` (see [`layer_selected`]) selects an `n × k` layer: a comma list of
/// `kind` or `kind:K` (that kind from K input features up), kind `expand`, `square`, `reduce`
/// or `all`; items that do not parse select nothing.
fn rule_selects(sel: &str, n: usize, k: usize) -> bool {
    let kind = match n.cmp(&k) {
        std::cmp::Ordering::Greater => "expand",
        std::cmp::Ordering::Equal => "square",
        std::cmp::Ordering::Less => "reduce",
    };
    sel.split(',').any(|item| {
        let (name, min_k) = match item.trim().split_once(':') {
            Some((name, min_k)) => match min_k.trim().parse::<usize>() {
                Ok(m) => (name.trim(), m),
                Err(_) => return false,
            },
            None => (item.trim(), 0),
        };
        (name == kind || name == "all") && k >= min_k
    })
}

/// Whether, under [`autocast_int8`], the linear layers that stay unquantized run in bf16: yes
/// where this CPU has native bf16 dot products that beat f32
/// ([`medsam_kernels::gemm::bf16_plan`]), unless `MEDSAM_INT8_REST=f32`.
pub fn unquantized_in_bf16() -> bool {
    if every_size() {
        return false;
    }
    use std::sync::OnceLock;
    static BF16: OnceLock<bool> = OnceLock::new();
    *BF16.get_or_init(|| {
        std::env::var("MEDSAM_INT8_REST").as_deref() != Ok("f32")
            && medsam_kernels::gemm::bf16_plan().precision == medsam_kernels::gemm::Precision::Bf16
    })
}

/// A tensor's data as one dense CPU slice, or None.
fn dense_cpu(t: &Tensor) -> Option<&[f32]> {
    if !t.is_contiguous() {
        return None;
    }
    let v = t.storage().cpu().ok()?;
    v.get(t.offset()..t.offset() + t.numel())
}

/// `act(x·Wᵀ + b + residual)` in int8, or None when this call does not run in int8 (not on the
/// CPU, a CPU without VNNI, a layer not selected, shapes the f32 path should reject, k beyond
/// the kernel's limit); the caller then runs the f32 path.
pub(crate) fn linear_int8(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
    gelu: bool,
) -> Result<Option<Tensor>> {
    let r = x.rank();
    if r == 0 || weight.rank() != 2 {
        return Ok(None);
    }
    let (n, k) = (weight.dim(0), weight.dim(1));
    let mut out_shape = x.shape().to_vec();
    out_shape[r - 1] = n;
    if x.shape()[r - 1] != k
        // Without VNNI the portable kernel is slower than f32 and only costs accuracy.
        || !int8::Int8Kernel::best().is_vnni()
        || !layer_selected(n, k)
        || !(every_size() || size_pays(n, k))
        || k > int8::MAX_K
        || bias.is_some_and(|b| b.shape() != [n])
        || residual.is_some_and(|res| res.shape() != out_shape.as_slice())
        || dense_cpu(weight).is_none()
    {
        return Ok(None);
    }
    let x = x.contiguous()?;
    let bias = bias.map(|b| b.contiguous()).transpose()?;
    let residual = residual.map(|r| r.contiguous()).transpose()?;
    let (Some(xs), Some(bs), Some(rs)) = (
        dense_cpu(&x),
        bias.as_ref().map_or(Some(None), |b| dense_cpu(b).map(Some)),
        residual
            .as_ref()
            .map_or(Some(None), |r| dense_cpu(r).map(Some)),
    ) else {
        return Ok(None);
    };
    let w = quantized(weight, n, k)?;
    let rows = xs.len() / k.max(1);
    let mut out = crate::backend::cpu::buffer(rows * n);
    let epilogue = Epilogue {
        col_bias: bs,
        row_bias: None,
        residual: rs.map(|r| (r, n)),
        gelu,
    };
    let Some(exact) = dense_cpu(weight) else {
        return Ok(None);
    };
    int8::linear(xs, k, rows, &w, exact, &mut out, n, epilogue);
    Tensor::from_storage(Storage::Cpu(out), &out_shape, x.device()).map(Some)
}

#[cfg(test)]
mod tests {
    use super::rule_selects;

    #[test]
    fn rules_select_by_kind_and_input_width() {
        // (n, k): expand, square, reduce at k = 768; reduce at k = 3072.
        let layers = [(2304, 768), (768, 768), (192, 768), (768, 3072)];
        let picks = |rule: &str| layers.map(|(n, k)| rule_selects(rule, n, k));
        assert_eq!(picks("expand"), [true, false, false, false]);
        assert_eq!(picks("square, reduce"), [false, true, true, true]);
        assert_eq!(picks("all"), [true; 4]);
        assert_eq!(picks("expand,reduce:1536"), [true, false, false, true]);
        assert_eq!(picks("all:1000"), [false, false, false, true]);
        assert_eq!(picks("reduce:x,bogus"), [false; 4]);
    }
}
