//! `ImageEncoder` and `FpnNeck` (`sam2/modeling/backbones/image_encoder.py`): 1×1 lateral convs
//! to `d_model`, top-down 2× upsampling into the levels listed in `fpn_top_down_levels`, a sine
//! position encoding per level, and `scalp` lowest-resolution levels dropped.

use super::config::{ImageEncoderConfig, NeckConfig};
use super::hieradet::Hiera;
use super::sam2_utils::{position_embedding_sine, upsample_nearest2x};
use crate::error::{Error, Result};
use crate::models::common::{join, Conv2d, Init, Module};
use crate::tensor::Tensor;
use crate::Device;
use std::collections::HashMap;
use std::sync::Mutex;

pub struct FpnNeck {
    pub d_model: usize,
    /// `convs.{i}.conv`: lateral 1×1 convs, lowest resolution first.
    pub convs: Vec<Conv2d>,
    pub fpn_top_down_levels: Vec<usize>,
    pub nearest: bool,
    /// Sine position encodings by grid size `(h, w)`: a function of the size alone.
    pos_cache: Mutex<HashMap<(usize, usize), Tensor>>,
}

impl Module for FpnNeck {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        for (i, c) in self.convs.iter_mut().enumerate() {
            c.visit(&join(prefix, &format!("convs.{i}.conv")), f);
        }
    }
}

impl FpnNeck {
    pub fn new(init: &mut Init, cfg: &NeckConfig) -> Result<Self> {
        Ok(FpnNeck {
            d_model: cfg.d_model,
            convs: cfg
                .backbone_channel_list
                .iter()
                .map(|&c| Conv2d::new(init, c, cfg.d_model, 1, 1, 0, true))
                .collect::<Result<_>>()?,
            fpn_top_down_levels: cfg.fpn_top_down_levels.clone(),
            nearest: cfg.fpn_interp_model == "nearest",
            pos_cache: Mutex::new(HashMap::new()),
        })
    }

    /// `position_embedding_sine` of an `h × w` grid, computed once per size and device.
    fn position_encoding(&self, h: usize, w: usize, device: Device) -> Result<Tensor> {
        let mut cache = self.pos_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pe) = cache.get(&(h, w)).filter(|pe| pe.device() == device) {
            return Ok(pe.clone());
        }
        let pe = position_embedding_sine(self.d_model, h, w, device)?;
        cache.insert((h, w), pe.clone());
        Ok(pe)
    }

    /// Trunk maps (highest resolution first) → (features, position encodings), same order.
    pub fn forward(&self, xs: &[Tensor]) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        if xs.len() != self.convs.len() {
            return Err(Error::shape(
                "fpn_neck",
                format!(
                    "{} trunk levels for {} lateral convs",
                    xs.len(),
                    self.convs.len()
                ),
            ));
        }
        let n = self.convs.len() - 1;
        let mut out = vec![None; n + 1];
        let mut pos = vec![None; n + 1];
        let mut prev: Option<Tensor> = None;
        for i in (0..=n).rev() {
            let lateral = self.convs[n - i].forward(&xs[i])?;
            let cur = match (&prev, self.fpn_top_down_levels.contains(&i)) {
                (Some(p), true) => {
                    let top_down = if self.nearest {
                        upsample_nearest2x(p)?
                    } else {
                        p.upsample_bilinear(2 * p.dim(2), 2 * p.dim(3))?
                    };
                    lateral.add(&top_down)?
                }
                _ => lateral,
            };
            let (b, h, w) = (cur.dim(0), cur.dim(2), cur.dim(3));
            let pe = self.position_encoding(h, w, cur.device())?;
            pos[i] = Some(if b == 1 {
                pe
            } else {
                pe.broadcast_to(&[b, self.d_model, h, w])?.contiguous()?
            });
            out[i] = Some(cur.clone());
            prev = Some(cur);
        }
        Ok((
            out.into_iter().flatten().collect(),
            pos.into_iter().flatten().collect(),
        ))
    }
}

/// What the image encoder returns (`vision_features` is the last of `backbone_fpn`).
pub struct BackboneOut {
    /// Levels after `scalp`, highest resolution first, `[B, d_model, h, w]`.
    pub backbone_fpn: Vec<Tensor>,
    pub vision_pos_enc: Vec<Tensor>,
}

pub struct ImageEncoder {
    pub trunk: Hiera,
    pub neck: FpnNeck,
    pub scalp: usize,
}

impl Module for ImageEncoder {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        self.trunk.visit(&join(prefix, "trunk"), f);
        self.neck.visit(&join(prefix, "neck"), f);
    }
}

impl ImageEncoder {
    pub fn new(init: &mut Init, cfg: &ImageEncoderConfig) -> Result<Self> {
        let trunk = Hiera::new(init, &cfg.trunk)?;
        if trunk.channel_list() != cfg.neck.backbone_channel_list {
            return Err(Error::Other(format!(
                "image_encoder.neck.backbone_channel_list {:?} does not match the trunk's stage widths {:?}",
                cfg.neck.backbone_channel_list,
                trunk.channel_list()
            )));
        }
        Ok(ImageEncoder {
            trunk,
            neck: FpnNeck::new(init, &cfg.neck)?,
            scalp: cfg.scalp,
        })
    }

    pub fn forward(&self, sample: &Tensor) -> Result<BackboneOut> {
        let (mut features, mut pos) = self.neck.forward(&self.trunk.forward(sample)?)?;
        let keep = features.len().saturating_sub(self.scalp);
        features.truncate(keep);
        pos.truncate(keep);
        Ok(BackboneOut {
            backbone_fpn: features,
            vision_pos_enc: pos,
        })
    }
}
