//! Building blocks shared by SAM's modules, named as in `segment_anything/modeling/common.py` and
//! `torch.nn` so their state-dict keys match.

use crate::error::Result;
use crate::tensor::Tensor;
use crate::Device;

/// Visits every parameter (and buffer) of a module under its state-dict name.
pub trait Module {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor));
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
    state: u64,
    pub device: Device,
}

impl Init {
    pub fn new(seed: u64, device: Device) -> Self {
        Init {
            state: seed ^ 0x9E37_79B9_7F4A_7C15,
            device,
        }
    }
    fn next_f64(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in `[-bound, bound)`, as PyTorch's default Linear/Conv init draws.
    pub fn uniform(&mut self, shape: &[usize], bound: f32) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| ((self.next_f64() * 2.0 - 1.0) * bound as f64) as f32)
            .collect();
        Tensor::from_slice(&v, shape, self.device)
    }
    /// Standard normal (Box–Muller) times `std`.
    pub fn normal(&mut self, shape: &[usize], std: f32) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                let (u1, u2) = (self.next_f64().max(1e-300), self.next_f64());
                ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std as f64)
                    as f32
            })
            .collect();
        Tensor::from_slice(&v, shape, self.device)
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

impl Module for Linear {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        f(&join(prefix, "weight"), &mut self.weight);
        if let Some(b) = &mut self.bias {
            f(&join(prefix, "bias"), b);
        }
    }
}

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

impl Module for LayerNorm {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        f(&join(prefix, "weight"), &mut self.weight);
        f(&join(prefix, "bias"), &mut self.bias);
    }
}

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

impl Module for LayerNorm2d {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        f(&join(prefix, "weight"), &mut self.weight);
        f(&join(prefix, "bias"), &mut self.bias);
    }
}

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

impl Module for Conv2d {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        f(&join(prefix, "weight"), &mut self.weight);
        if let Some(b) = &mut self.bias {
            f(&join(prefix, "bias"), b);
        }
    }
}

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

impl Module for ConvTranspose2d {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        f(&join(prefix, "weight"), &mut self.weight);
        f(&join(prefix, "bias"), &mut self.bias);
    }
}

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

impl Module for MlpBlock {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        self.lin1.visit(&join(prefix, "lin1"), f);
        self.lin2.visit(&join(prefix, "lin2"), f);
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

impl Module for Embedding {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        f(&join(prefix, "weight"), &mut self.weight);
    }
}
