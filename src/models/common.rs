//! Building blocks shared by SAM's modules, named as in `segment_anything/modeling/common.py` and
//! `torch.nn` so their state-dict keys match.

use crate::error::{Error, Result};
use crate::ops::nn::PickedRows;
use crate::rng::{Rng, GOLDEN_GAMMA};
use crate::tensor::Tensor;
use crate::Device;
use medsam_kernels::window::RowAt;
use std::collections::BTreeMap;

/// Visits every parameter (and buffer) of a module under its state-dict name.
pub trait Module {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor));
}

/// `impl Module for $ty` from its parts in PyTorch's `parameters()` order, each under its field's
/// name (or the name after `as`, e.g. an `nn.Sequential` index):
/// - `field`: a sub-module;
/// - `param field`: a tensor; `opt_param field`: an `Option<Tensor>`, visited when present;
/// - `list field`: a `Vec` of sub-modules, named `field.0`, `field.1`, ...
///
/// A type with one generic parameter is written `Type<M: Bound>`.
macro_rules! module_parts {
    ($ty:ident<$g:ident: $bound:ident>: $($parts:tt)*) => {
        impl<$g: $bound> $crate::models::common::Module for $ty<$g> {
            $crate::models::common::module_parts!(@fn $($parts)*);
        }
    };
    ($ty:ident: $($parts:tt)*) => {
        impl $crate::models::common::Module for $ty {
            $crate::models::common::module_parts!(@fn $($parts)*);
        }
    };
    (@fn $($parts:tt)*) => {
        fn visit(
            &mut self,
            prefix: &str,
            f: &mut dyn FnMut(&str, &mut $crate::tensor::Tensor),
        ) {
            $crate::models::common::module_parts!(@visit self prefix f [$($parts)*]);
        }
    };
    (@visit $s:ident $p:ident $f:ident [$(,)?]) => {};
    (@visit $s:ident $p:ident $f:ident [param $field:ident $(as $name:literal)? $(, $($rest:tt)*)?]) => {
        $f(&$crate::models::common::join($p, $crate::models::common::module_parts!(@name $field $($name)?)), &mut $s.$field);
        $crate::models::common::module_parts!(@visit $s $p $f [$($($rest)*)?]);
    };
    (@visit $s:ident $p:ident $f:ident [opt_param $field:ident $(, $($rest:tt)*)?]) => {
        if let Some(t) = &mut $s.$field {
            $f(&$crate::models::common::join($p, stringify!($field)), t);
        }
        $crate::models::common::module_parts!(@visit $s $p $f [$($($rest)*)?]);
    };
    (@visit $s:ident $p:ident $f:ident [list $field:ident $(, $($rest:tt)*)?]) => {
        for (i, m) in $s.$field.iter_mut().enumerate() {
            let name = format!(concat!(stringify!($field), ".{}"), i);
            $crate::models::common::Module::visit(m, &$crate::models::common::join($p, &name), $f);
        }
        $crate::models::common::module_parts!(@visit $s $p $f [$($($rest)*)?]);
    };
    (@visit $s:ident $p:ident $f:ident [$field:ident $(as $name:literal)? $(, $($rest:tt)*)?]) => {
        $crate::models::common::Module::visit(
            &mut $s.$field,
            &$crate::models::common::join($p, $crate::models::common::module_parts!(@name $field $($name)?)),
            $f,
        );
        $crate::models::common::module_parts!(@visit $s $p $f [$($($rest)*)?]);
    };
    (@name $field:ident) => { stringify!($field) };
    (@name $field:ident $name:literal) => { $name };
}
pub(crate) use module_parts;

/// What loading a state dict found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LoadReport {
    pub loaded: usize,
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    /// (key, expected shape, checkpoint shape)
    pub mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
}

impl LoadReport {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }
    /// An error listing every problem by key, or Ok for a clean load.
    pub fn into_result(self) -> Result<Self> {
        if self.is_clean() {
            return Ok(self);
        }
        // At most a few keys of each kind, with the count: a wrong model can miss hundreds.
        fn some(keys: &[String]) -> String {
            const SHOWN: usize = 5;
            let head = keys[..keys.len().min(SHOWN)].join(", ");
            match keys.len() {
                n if n > SHOWN => format!("{head}, ... ({n} in all)"),
                _ => head,
            }
        }
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!("missing keys: {}", some(&self.missing)));
        }
        if !self.unexpected.is_empty() {
            parts.push(format!("unexpected keys: {}", some(&self.unexpected)));
        }
        for (k, want, got) in self.mismatched.iter().take(5) {
            parts.push(format!(
                "{k}: model expects shape {want:?}, checkpoint has {got:?}"
            ));
        }
        if self.mismatched.len() > 5 {
            parts.push(format!(
                "{} more wrongly shaped keys",
                self.mismatched.len() - 5
            ));
        }
        Err(Error::Weights(parts.join("; ")))
    }
}

/// Every parameter and buffer of `module` by state-dict name, in visiting (PyTorch's) order.
pub fn state_dict(module: &mut dyn Module) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    module.visit("", &mut |name, t| out.push((name.to_string(), t.detach())));
    out
}

/// Copies matching tensors of `weights` into `module`; reports missing, unexpected and wrongly
/// shaped keys by name.
pub fn load_state_dict(
    module: &mut dyn Module,
    weights: &BTreeMap<String, Tensor>,
) -> Result<LoadReport> {
    let mut report = LoadReport::default();
    let mut seen = std::collections::HashSet::new();
    let mut failure = None;
    module.visit("", &mut |name, t| {
        seen.insert(name.to_string());
        match weights.get(name) {
            None => report.missing.push(name.to_string()),
            Some(w) if w.shape() != t.shape() => {
                report
                    .mismatched
                    .push((name.to_string(), t.shape().to_vec(), w.shape().to_vec()))
            }
            Some(w) => match t.assign(w) {
                Ok(()) => report.loaded += 1,
                Err(e) => failure = Some(e),
            },
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    report.unexpected = weights
        .keys()
        .filter(|k| !seen.contains(*k))
        .cloned()
        .collect();
    Ok(report)
}

/// The tensors of `parts` (each a distinct field of one model, with its state-dict prefix) that
/// `keep` accepts by name, in order, as mutable references: a model's trainable parameters in
/// `torch.optim` order.
pub fn parameters<'a>(
    parts: Vec<(&str, &'a mut dyn Module)>,
    keep: impl Fn(&str) -> bool,
) -> Vec<(String, &'a mut Tensor)> {
    let mut out: Vec<(String, *mut Tensor)> = Vec::new();
    for (prefix, part) in parts {
        part.visit(prefix, &mut |n, t| {
            if keep(n) {
                out.push((n.to_string(), t as *mut Tensor))
            }
        });
    }
    // SAFETY: the parts are distinct `&'a mut` borrows, so nothing else reaches their tensors
    // while the returned references live, and `visit` hands out each tensor of a part once, so
    // no two entries alias. Visiting only records pointers; nothing moves a tensor afterwards.
    out.into_iter()
        .map(|(n, p)| (n, unsafe { &mut *p }))
        .collect()
}

/// Marks `params` as variables (so backward fills their `.grad`); already-marked ones are kept.
pub fn enable_training(params: Vec<(String, &mut Tensor)>) {
    for (_, t) in params {
        if !t.requires_grad() {
            *t = t.detach().into_variable();
        }
    }
}

/// The inherent state-dict methods of a promptable segmenter whose `image_encoder` and
/// `mask_decoder` fields are trained (the prompt encoder is frozen): `state_dict`,
/// `load_state_dict`, `trainable_parameters` (the tensors of those two whose state-dict name
/// passes `$keep`, documented by the attributes given) and `enable_training`.
macro_rules! state_dict_methods {
    ($(#[$trainable_doc:meta])* keep: $keep:expr) => {
        /// Every parameter and buffer by state-dict name, in PyTorch's order.
        pub fn state_dict(&mut self) -> Vec<(String, $crate::tensor::Tensor)> {
            $crate::models::common::state_dict(self)
        }

        /// Copies matching tensors in; reports missing, unexpected and wrongly shaped keys by name.
        pub fn load_state_dict(
            &mut self,
            weights: &std::collections::BTreeMap<String, $crate::tensor::Tensor>,
        ) -> $crate::error::Result<$crate::models::common::LoadReport> {
            $crate::models::common::load_state_dict(self, weights)
        }

        $(#[$trainable_doc])*
        pub fn trainable_parameters(&mut self) -> Vec<(String, &mut $crate::tensor::Tensor)> {
            $crate::models::common::parameters(
                vec![
                    (
                        "image_encoder",
                        &mut self.image_encoder as &mut dyn $crate::models::common::Module,
                    ),
                    ("mask_decoder", &mut self.mask_decoder),
                ],
                $keep,
            )
        }

        /// Marks the trainable parameters as variables (so backward fills their `.grad`).
        pub fn enable_training(&mut self) {
            $crate::models::common::enable_training(self.trainable_parameters());
        }
    };
}
pub(crate) use state_dict_methods;

/// Whole rows (`len` wide) picked from the row tables `parts` by `index` (a part and a row, or
/// `RowAt::FILL` for the row `fill`), as `[index.len(), len]`, without autograd recording
/// (inference only): how the windowed attention blocks (SAM's ViT, TinyViT, Hiera) cut windows
/// out of a map of tokens and put them back ([`Tensor::pick_rows`]).
pub(crate) fn gather_token_rows(
    parts: &[&Tensor],
    fill: Option<&Tensor>,
    index: &[RowAt],
    len: usize,
) -> Result<Tensor> {
    use medsam_kernels::window::RowPick;
    Tensor::pick_rows(parts, fill, index, RowPick::rows(len))?.reshape(&[index.len(), len])
}

/// One head-split part of a q/k/v projection's rows: the `c` columns from `col` of each row of
/// `table` (rows of `width`, read in place), cut into `heads` heads, for the rows `index` (a
/// row, or [`RowAt::FILL`] for the row `fill`) taken `block` at a time (a window's tokens) →
/// `[index.len() / block · heads, block, c / heads]`, each head's rows contiguous (the attention
/// kernel's operand layout), as [`PickedRows`] for [`crate::ops::nn::attention_picked`] to read
/// in place.
pub(crate) fn picked_heads<'a>(
    table: &'a Tensor,
    fill: Option<&'a Tensor>,
    (width, col, c): (usize, usize, usize),
    heads: usize,
    index: &'a [RowAt],
    block: usize,
) -> Result<PickedRows<'a>> {
    if heads == 0 || !c.is_multiple_of(heads) || block == 0 || !index.len().is_multiple_of(block) {
        return Err(Error::shape(
            "picked_heads",
            format!(
                "{c} channels for {heads} heads, {} indices in blocks of {block}",
                index.len()
            ),
        ));
    }
    let pick = medsam_kernels::window::RowPick {
        width,
        col,
        len: c / heads,
        groups: heads,
        block,
    };
    Ok(PickedRows {
        table,
        fill,
        index,
        pick,
        head_stride: c / heads,
    })
}

/// The windows of `b` maps of `h × w` tokens grouped by the part of them inside the map
/// (`inside`: rows × columns; only windows on the bottom and right edges are cut), in order of
/// first appearance (interior windows first): TinyViT's and Hiera's windowed attention in
/// inference attend each group with its inside positions as queries, so the padding's queries,
/// which upstream crops, are never computed.
pub(crate) struct EdgeGroups {
    b: usize,
    hw: (usize, usize),
    ws: usize,
    pub(crate) groups: Vec<EdgeGroup>,
}

pub(crate) struct EdgeGroup {
    pub(crate) inside: (usize, usize),
    /// `(image, window row, window column)` of each window, in the group's order.
    pub(crate) windows: Vec<(usize, usize, usize)>,
}

impl EdgeGroups {
    pub(crate) fn new(b: usize, (h, w): (usize, usize), ws: usize) -> Self {
        let mut groups: Vec<EdgeGroup> = Vec::new();
        for bi in 0..b {
            for wy in 0..h.div_ceil(ws) {
                for wx in 0..w.div_ceil(ws) {
                    let inside = ((h - wy * ws).min(ws), (w - wx * ws).min(ws));
                    match groups.iter_mut().find(|g| g.inside == inside) {
                        Some(g) => g.windows.push((bi, wy, wx)),
                        None => groups.push(EdgeGroup {
                            inside,
                            windows: vec![(bi, wy, wx)],
                        }),
                    }
                }
            }
        }
        EdgeGroups {
            b,
            hw: (h, w),
            ws,
            groups,
        }
    }

    /// The map's `(h, w)`.
    pub(crate) fn hw(&self) -> (usize, usize) {
        self.hw
    }

    /// Token at position `(iy, ix)` of window `(bi, wy, wx)`, [`RowAt::FILL`] outside the map.
    pub(crate) fn token(
        &self,
        (bi, wy, wx): (usize, usize, usize),
        (iy, ix): (usize, usize),
    ) -> RowAt {
        let ((h, w), ws) = (self.hw, self.ws);
        let (y, x) = (wy * ws + iy, wx * ws + ix);
        if y < h && x < w {
            RowAt::row((bi * h + y) * w + x)
        } else {
            RowAt::FILL
        }
    }

    /// Tokens of every position of every window, group after group.
    pub(crate) fn window_index(&self) -> Vec<RowAt> {
        let ws = self.ws;
        let mut idx =
            Vec::with_capacity(self.b * self.hw.0.div_ceil(ws) * self.hw.1.div_ceil(ws) * ws * ws);
        for g in &self.groups {
            for &win in &g.windows {
                for iy in 0..ws {
                    for ix in 0..ws {
                        idx.push(self.token(win, (iy, ix)));
                    }
                }
            }
        }
        idx
    }

    /// Tokens of the inside positions of `g`'s windows (its queries).
    pub(crate) fn query_index(&self, g: &EdgeGroup) -> Vec<RowAt> {
        let pos = g.inside_positions();
        let mut idx = Vec::with_capacity(g.windows.len() * pos.len());
        for &win in &g.windows {
            idx.extend(pos.iter().map(|&p| self.token(win, p)));
        }
        idx
    }

    /// For output row `token·heads + head` (of `kd` values): the group and its row in that
    /// group's attention output `[windows, heads, inside positions, kd]`.
    pub(crate) fn unwindow_index(&self, heads: usize) -> Vec<RowAt> {
        let (h, w) = self.hw;
        let mut idx = vec![RowAt::FILL; self.b * h * w * heads];
        for (gi, g) in self.groups.iter().enumerate() {
            let pos = g.inside_positions();
            let nq = pos.len();
            for (j, &win) in g.windows.iter().enumerate() {
                for (qi, &p) in pos.iter().enumerate() {
                    let t = self.token(win, p).row;
                    for hd in 0..heads {
                        let row = (j * heads + hd) * nq + qi;
                        idx[t * heads + hd] = RowAt { part: gi, row };
                    }
                }
            }
        }
        idx
    }
}

impl EdgeGroup {
    /// `(row, column)` of the window positions inside the map, row-major.
    pub(crate) fn inside_positions(&self) -> Vec<(usize, usize)> {
        let (vh, vw) = self.inside;
        (0..vh)
            .flat_map(|iy| (0..vw).map(move |ix| (iy, ix)))
            .collect()
    }
}

/// `prefix.name`, or `name` at the root.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Deterministic parameter initialisation (a SplitMix64 stream), so a model built without a
/// checkpoint is reproducible for a seed.
pub struct Init {
    /// `None` for [`Init::placeholders`]: no draws, zero tensors instead.
    rng: Option<Rng>,
    pub device: Device,
}

thread_local! {
    static PLACEHOLDERS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `build` (a model constructor) with placeholder initialisation: every [`Init`] made on
/// this thread meanwhile is [`Init::placeholders`]. For a model whose every parameter is about
/// to be overwritten by a checkpoint; loading must then reject missing keys.
pub fn with_placeholder_init<T>(build: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            PLACEHOLDERS.with(|p| p.set(self.0));
        }
    }
    let _reset = Reset(PLACEHOLDERS.with(|p| p.replace(true)));
    build()
}

impl Init {
    /// The stream for `seed` — or [`Init::placeholders`] inside [`with_placeholder_init`].
    pub fn new(seed: u64, device: Device) -> Self {
        if PLACEHOLDERS.with(|p| p.get()) {
            return Init::placeholders(device);
        }
        Init {
            rng: Some(Rng::from_state(seed ^ GOLDEN_GAMMA)),
            device,
        }
    }
    /// An initialiser for a model whose every parameter is about to be overwritten by a
    /// checkpoint: the random draws ([`Init::uniform`], [`Init::normal`]) give zero tensors from
    /// a zeroed allocation instead, whose pages are not touched until written (the constant
    /// ones are unchanged).
    pub fn placeholders(device: Device) -> Self {
        Init { rng: None, device }
    }
    /// `n` values from `draw`, or `None` for placeholders.
    fn draw(&mut self, n: usize, mut draw: impl FnMut(&mut Rng) -> f32) -> Option<Vec<f32>> {
        let rng = self.rng.as_mut()?;
        Some((0..n).map(|_| draw(rng)).collect())
    }
    fn tensor(&mut self, v: Option<Vec<f32>>, shape: &[usize]) -> Result<Tensor> {
        match v {
            Some(v) => Tensor::from_slice(&v, shape, self.device),
            None => self.zeros(shape),
        }
    }
    /// Uniform in `[-bound, bound)`, as PyTorch's default Linear/Conv init draws.
    pub fn uniform(&mut self, shape: &[usize], bound: f32) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v = self.draw(n, |rng| ((rng.uniform() * 2.0 - 1.0) * bound as f64) as f32);
        self.tensor(v, shape)
    }
    /// Standard normal (Box–Muller) times `std`.
    pub fn normal(&mut self, shape: &[usize], std: f32) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v = self.draw(n, |rng| {
            let (u1, u2) = (rng.uniform().max(1e-300), rng.uniform());
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std as f64) as f32
        });
        self.tensor(v, shape)
    }
    pub fn zeros(&mut self, shape: &[usize]) -> Result<Tensor> {
        Tensor::zeros(shape, self.device)
    }
    pub fn ones(&mut self, shape: &[usize]) -> Result<Tensor> {
        Tensor::full(shape, 1.0, self.device)
    }
}

/// `nn.Linear`: weight `[out, in]`.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(init: &mut Init, inp: usize, out: usize, bias: bool) -> Result<Self> {
        let bound = 1.0 / (inp as f32).sqrt();
        Ok(Linear {
            weight: init.uniform(&[out, inp], bound)?,
            bias: if bias {
                Some(init.uniform(&[out], bound)?)
            } else {
                None
            },
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

module_parts!(Linear: param weight, opt_param bias);

/// `nn.LayerNorm` over the last axis.
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f32,
}

impl LayerNorm {
    pub fn new(init: &mut Init, dim: usize, eps: f32) -> Result<Self> {
        Ok(LayerNorm {
            weight: init.ones(&[dim])?,
            bias: init.zeros(&[dim])?,
            eps,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.layer_norm(&self.weight, &self.bias, self.eps)
    }
}

module_parts!(LayerNorm: param weight, param bias);

/// SAM's `LayerNorm2d`: NCHW normalised over channels, eps 1e-6.
pub struct LayerNorm2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f32,
}

impl LayerNorm2d {
    pub fn new(init: &mut Init, c: usize) -> Result<Self> {
        Ok(LayerNorm2d {
            weight: init.ones(&[c])?,
            bias: init.zeros(&[c])?,
            eps: 1e-6,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.layer_norm2d(&self.weight, &self.bias, self.eps)
    }
}

module_parts!(LayerNorm2d: param weight, param bias);

/// `nn.Conv2d` (groups = 1).
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub stride: usize,
    pub padding: usize,
}

impl Conv2d {
    pub fn new(
        init: &mut Init,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    ) -> Result<Self> {
        let bound = 1.0 / ((cin * k * k) as f32).sqrt();
        Ok(Conv2d {
            weight: init.uniform(&[cout, cin, k, k], bound)?,
            bias: if bias {
                Some(init.uniform(&[cout], bound)?)
            } else {
                None
            },
            stride,
            padding,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.conv2d(&self.weight, self.bias.as_ref(), self.stride, self.padding)
    }
}

module_parts!(Conv2d: param weight, opt_param bias);

/// `nn.ConvTranspose2d` with kernel = stride (what SAM uses), weight `[in, out, k, k]`.
pub struct ConvTranspose2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub stride: usize,
}

impl ConvTranspose2d {
    pub fn new(init: &mut Init, cin: usize, cout: usize, k: usize) -> Result<Self> {
        let bound = 1.0 / ((cout * k * k) as f32).sqrt();
        Ok(ConvTranspose2d {
            weight: init.uniform(&[cin, cout, k, k], bound)?,
            bias: init.uniform(&[cout], bound)?,
            stride: k,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.conv_transpose2d(&self.weight, Some(&self.bias), self.stride)
    }
}

module_parts!(ConvTranspose2d: param weight, param bias);

/// Activations used by SAM's MLPs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    Gelu,
    Relu,
}

impl Act {
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Act::Gelu => x.gelu(),
            Act::Relu => x.relu(),
        }
    }
}

/// `MLPBlock`: lin1 → act → lin2.
pub struct MlpBlock {
    pub lin1: Linear,
    pub lin2: Linear,
    pub act: Act,
}

impl MlpBlock {
    pub fn new(init: &mut Init, dim: usize, hidden: usize, act: Act) -> Result<Self> {
        Ok(MlpBlock {
            lin1: Linear::new(init, dim, hidden, true)?,
            lin2: Linear::new(init, hidden, dim, true)?,
            act,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.lin2.forward(&self.act.apply(&self.lin1.forward(x)?)?)
    }
}

module_parts!(MlpBlock: lin1, lin2);

/// `MLP` of SAM's mask decoder and of SAM 2 (`layers.{i}`): `num_layers` linears with ReLU
/// (or GELU) between them, optionally a sigmoid on the output.
pub struct Mlp {
    pub layers: Vec<Linear>,
    pub gelu: bool,
    pub sigmoid_output: bool,
}

module_parts!(Mlp: list layers);

impl Mlp {
    pub fn new(
        init: &mut Init,
        inp: usize,
        hidden: usize,
        out: usize,
        num_layers: usize,
        gelu: bool,
    ) -> Result<Self> {
        let mut dims = vec![inp];
        dims.extend(std::iter::repeat_n(hidden, num_layers - 1));
        dims.push(out);
        Ok(Mlp {
            layers: dims
                .windows(2)
                .map(|w| Linear::new(init, w[0], w[1], true))
                .collect::<Result<_>>()?,
            gelu,
            sigmoid_output: false,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let n = self.layers.len();
        let mut x = x.clone();
        for (i, l) in self.layers.iter().enumerate() {
            x = if i + 1 < n {
                if self.gelu {
                    x.linear_act(&l.weight, l.bias.as_ref(), true)?
                } else {
                    l.forward(&x)?.relu()?
                }
            } else {
                l.forward(&x)?
            };
        }
        if self.sigmoid_output {
            x = x.sigmoid()?;
        }
        Ok(x)
    }
}

/// `nn.Embedding`: a `[n, dim]` weight.
pub struct Embedding {
    pub weight: Tensor,
}

impl Embedding {
    pub fn new(init: &mut Init, n: usize, dim: usize) -> Result<Self> {
        Ok(Embedding {
            weight: init.normal(&[n, dim], 1.0)?,
        })
    }
}

module_parts!(Embedding: param weight);
