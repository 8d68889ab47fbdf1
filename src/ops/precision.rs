//! The precision an image encoder runs in at inference, as one value the CLI, the predictors
//! (SAM, LiteMedSAM, MedSAM2's video predictor), the bench and the Python package share.
//! It sets the image encoder's precision and, for MedSAM2, its memory attention's
//! ([`InferPrecision::memory_attention`]); prompt encoders, mask decoders and MedSAM2's memory
//! encoder always run in f32.

use super::linalg::autocast_bf16;
use super::quant::autocast_int8;

/// Numeric precision of the image encoder at inference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum InferPrecision {
    #[default]
    F32,
    /// Matrix products in bf16 where this CPU runs bf16 faster than f32, else f32
    /// (`medsam_kernels::gemm::bf16_plan`).
    Bf16,
    /// Linear layers dynamically quantized to int8 (per-channel weights, per-token
    /// activations), as PyTorch's `quantize_dynamic`; see `medsam::ops::quant`.
    Int8,
}

impl InferPrecision {
    /// The name the CLI and the Python package give it: "f32", "bf16" or "int8".
    pub fn name(self) -> &'static str {
        match self {
            InferPrecision::F32 => "f32",
            InferPrecision::Bf16 => "bf16",
            InferPrecision::Int8 => "int8",
        }
    }

    /// The precision MedSAM2's memory attention runs at when its image encoder runs at `self`:
    /// bf16 under both bf16 and int8 — quantizing its linear layers to int8 as well was no
    /// faster than bf16 and cost accuracy (t512 bench volume, int8 encoder, mask IoU against
    /// all-f32: memory attention f32 0.9916, bf16 0.9943, int8 0.9898; 65 steps 18.3–19.7 s,
    /// 14.7–15.0 s, 14.7–16.7 s on a 2-core Zen 5). Where bf16 does not pay on this CPU the
    /// autocast falls back to f32, as everywhere.
    pub fn memory_attention(self) -> InferPrecision {
        match self {
            InferPrecision::F32 => InferPrecision::F32,
            InferPrecision::Bf16 | InferPrecision::Int8 => InferPrecision::Bf16,
        }
    }

    /// Runs `f` (an encoder's forward) at this precision: under `autocast_bf16` for bf16, under
    /// `autocast_int8` for int8, with both off for f32.
    pub fn autocast<T>(self, f: impl FnOnce() -> T) -> T {
        autocast_bf16(self == InferPrecision::Bf16, || {
            autocast_int8(self == InferPrecision::Int8, f)
        })
    }
}
