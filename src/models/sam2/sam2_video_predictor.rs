//! `SAM2VideoPredictor` (`sam2/sam2_video_predictor.py`): an inference state over a stack of
//! preprocessed frames (video frames or volume slices), prompts (points and/or a box, or a
//! mask) on any frame for any object id, propagation forward or in reverse with a per-frame
//! callback, and reset. The memory bank follows the reference: prompted frames are conditioning frames,
//! their memory is encoded from the binarised prompt mask when propagation starts, tracked
//! frames' memories are stored rounded through bfloat16.
//!
//! Hole filling of the low-res masks (`fill_hole_area`, CUDA-only in the reference, so off
//! on its CPU path) is a switch: [`VideoPredictor::fill_hole_area`].

use super::frames::Uint8Frames;
use super::sam::prompt_encoder::PointInputs;
use super::sam2_base::{
    round_bf16, FrameFeatures, FrameOutput, OutputDict, Sam2Base, NO_OBJ_SCORE,
};
use super::sam2_utils::interpolate_bilinear_aa;
use crate::error::{Error, Result};
use crate::ops::precision::InferPrecision;
use crate::tensor::Tensor;
use crate::Device;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

/// Nanoseconds spent in the image encoder by every predictor of the process (for profiles:
/// the rest of a propagation is the memory path and the SAM heads).
static ENCODER_NANOS: AtomicU64 = AtomicU64::new(0);

/// Seconds the image encoder has run in this process, over all predictors.
pub fn encoder_seconds_total() -> f64 {
    ENCODER_NANOS.load(Ordering::Relaxed) as f64 * 1e-9
}

pub struct VideoPredictor {
    pub model: Sam2Base,
    /// Fill background holes of at most this many low-res pixels (8-connected) with logit 0.1;
    /// 0 = off (the reference on CPU). `build_sam2_video_predictor` asks for 8.
    pub fill_hole_area: usize,
    /// Keep the image features of every frame instead of only the last one.
    pub cache_all_features: bool,
    /// Precision of the image encoder; the memory attention follows it as
    /// [`InferPrecision::memory_attention`] says, the rest (heads, memory encoder) runs in f32.
    pub precision: InferPrecision,
}

#[derive(Clone, Default)]
struct ObjectState {
    point_inputs: BTreeMap<usize, PointInputs>,
    /// frame → mask prompt `[1, 1, S, S]` (0/1)
    mask_inputs: BTreeMap<usize, Tensor>,
    output: OutputDict,
    temp_output: OutputDict,
    /// frame → tracked in reverse
    frames_tracked: BTreeMap<usize, bool>,
}

impl ObjectState {
    /// (is_init_cond_frame, reverse) of a new prompt on `frame_idx`: a frame not yet tracked
    /// starts a conditioning frame, a tracked one is corrected in the direction it was tracked.
    fn tracking_of(&self, frame_idx: usize) -> (bool, bool) {
        let tracked = self.frames_tracked.get(&frame_idx).copied();
        (tracked.is_none(), tracked.unwrap_or(false))
    }
}

/// The frames an inference state tracks through.
#[derive(Clone)]
pub enum Frames {
    /// `[N, 3, S, S]` normalised model input.
    Normalised(Tensor),
    /// uint8 frames at the model size, normalised one at a time when encoded.
    Uint8(Uint8Frames),
}

impl From<Tensor> for Frames {
    fn from(t: Tensor) -> Self {
        Frames::Normalised(t)
    }
}

impl From<Uint8Frames> for Frames {
    fn from(f: Uint8Frames) -> Self {
        Frames::Uint8(f)
    }
}

impl Frames {
    /// Number of frames.
    pub fn len(&self) -> usize {
        match self {
            Frames::Normalised(t) => t.dim(0),
            Frames::Uint8(f) => f.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Frame `i` as model input `[1, 3, S, S]`.
    pub fn frame(&self, i: usize) -> Result<Tensor> {
        match self {
            Frames::Normalised(t) => t.narrow(0, i, 1),
            Frames::Uint8(f) => f.frame(i),
        }
    }
}

/// `inference_state`.
pub struct InferenceState {
    /// The frames (normalised model input, or uint8 normalised on demand).
    pub images: Frames,
    /// Where frames and masks live (the frames' device, or the model's for uint8 frames).
    device: Device,
    pub num_frames: usize,
    pub video_height: usize,
    pub video_width: usize,
    cached_features: HashMap<usize, FrameFeatures>,
    maskmem_pos_enc: Option<Tensor>,
    obj_ids: Vec<i64>,
    objects: Vec<ObjectState>,
}

impl InferenceState {
    pub fn obj_ids(&self) -> &[i64] {
        &self.obj_ids
    }
    /// The stored output of object `obj_id` on `frame_idx`, if tracked (for inspection).
    pub fn frame_output(&self, obj_id: i64, frame_idx: usize) -> Option<&FrameOutput> {
        let i = self.obj_ids.iter().position(|&o| o == obj_id)?;
        let o = &self.objects[i].output;
        o.cond_frame_outputs
            .get(&frame_idx)
            .or_else(|| o.non_cond_frame_outputs.get(&frame_idx))
    }
}

/// A box `[x0, y0, x1, y1]` and/or points, in video pixels (or normalised to [0, 1] when
/// `normalize_coords` is false... as the reference: coordinates are divided by the video size
/// when `normalize_coords`, then scaled to the model input).
#[derive(Clone, Debug, Default)]
pub struct Prompt {
    pub points: Vec<[f32; 2]>,
    pub labels: Vec<i32>,
    pub bbox: Option<[f32; 4]>,
}

impl VideoPredictor {
    pub fn new(model: Sam2Base) -> Self {
        VideoPredictor {
            model,
            fill_hole_area: 0,
            cache_all_features: false,
            precision: InferPrecision::F32,
        }
    }

    /// `init_state` on frames already resized to the model size: normalised `[N, 3, S, S]`
    /// (a [`Tensor`]) or [`Uint8Frames`]; `video_height × video_width` is the size masks are
    /// returned at.
    pub fn init_state(
        &self,
        images: impl Into<Frames>,
        video_height: usize,
        video_width: usize,
    ) -> Result<InferenceState> {
        let images = images.into();
        let s = self.model.config.image_size;
        let device = match &images {
            Frames::Normalised(t) => {
                if t.rank() != 4 || t.dim(1) != 3 || t.dim(2) != s || t.dim(3) != s {
                    return Err(Error::shape(
                        "init_state",
                        format!("frames must be [N, 3, {s}, {s}], got {:?}", t.shape()),
                    ));
                }
                t.device()
            }
            Frames::Uint8(f) => {
                if f.size() != s {
                    return Err(Error::shape(
                        "init_state",
                        format!("frames are {0}×{0}, the model takes {s}×{s}", f.size()),
                    ));
                }
                self.model.no_mem_embed.device()
            }
        };
        if images.is_empty() || video_height == 0 || video_width == 0 {
            return Err(Error::arg(
                "init_state",
                "needs at least one frame and a non-empty video size",
            ));
        }
        let mut state = InferenceState {
            num_frames: images.len(),
            images,
            device,
            video_height,
            video_width,
            cached_features: HashMap::new(),
            maskmem_pos_enc: None,
            obj_ids: Vec::new(),
            objects: Vec::new(),
        };
        self.get_image_feature(&mut state, 0)?;
        Ok(state)
    }

    fn get_image_feature(
        &self,
        state: &mut InferenceState,
        frame_idx: usize,
    ) -> Result<FrameFeatures> {
        if let Some(f) = state.cached_features.get(&frame_idx) {
            return Ok(f.clone());
        }
        let img = state.images.frame(frame_idx)?.to_device(state.device)?;
        let t0 = std::time::Instant::now();
        let f = self.precision.autocast(|| self.model.forward_image(&img))?;
        ENCODER_NANOS.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        if !self.cache_all_features {
            state.cached_features.clear();
        }
        state.cached_features.insert(frame_idx, f.clone());
        Ok(f)
    }

    fn obj_id_to_idx(state: &mut InferenceState, obj_id: i64) -> usize {
        if let Some(i) = state.obj_ids.iter().position(|&o| o == obj_id) {
            return i;
        }
        state.obj_ids.push(obj_id);
        state.objects.push(ObjectState::default());
        state.obj_ids.len() - 1
    }

    /// `add_new_points_or_box`: returns the frame's masks at video resolution for every object,
    /// `[n_obj, 1, H, W]` logits.
    pub fn add_new_points_or_box(
        &self,
        state: &mut InferenceState,
        frame_idx: usize,
        obj_id: i64,
        prompt: &Prompt,
        clear_old_points: bool,
        normalize_coords: bool,
    ) -> Result<Tensor> {
        if frame_idx >= state.num_frames {
            return Err(Error::arg(
                "frame_idx",
                format!("{frame_idx} is outside the {} frames", state.num_frames),
            ));
        }
        if prompt.points.len() != prompt.labels.len() {
            return Err(Error::arg(
                "points",
                "points and labels must be given together",
            ));
        }
        if prompt.points.is_empty() && prompt.bbox.is_none() {
            return Err(Error::arg(
                "prompt",
                "at least one point or a box is needed",
            ));
        }
        if prompt.bbox.is_some() && !clear_old_points {
            return Err(Error::arg(
                "box",
                "a box must come before any point prompt (use clear_old_points)",
            ));
        }
        let obj_idx = Self::obj_id_to_idx(state, obj_id);
        let mut coords = Vec::new();
        let mut labels = Vec::new();
        if let Some(b) = prompt.bbox {
            coords.push([b[0], b[1]]);
            coords.push([b[2], b[3]]);
            labels.extend([2, 3]);
        }
        coords.extend(prompt.points.iter().copied());
        labels.extend(prompt.labels.iter().copied());
        let s = self.model.config.image_size as f32;
        let (vw, vh) = (state.video_width as f32, state.video_height as f32);
        for c in &mut coords {
            if normalize_coords {
                c[0] /= vw;
                c[1] /= vh;
            }
            c[0] *= s;
            c[1] *= s;
        }
        let obj = &mut state.objects[obj_idx];
        let mut point_inputs = PointInputs { coords, labels };
        if !clear_old_points {
            if let Some(old) = obj.point_inputs.get(&frame_idx) {
                let mut merged = old.clone();
                merged.coords.extend(point_inputs.coords);
                merged.labels.extend(point_inputs.labels);
                point_inputs = merged;
            }
        }
        obj.point_inputs.insert(frame_idx, point_inputs.clone());
        obj.mask_inputs.remove(&frame_idx);
        let (is_init_cond_frame, reverse) = obj.tracking_of(frame_idx);
        // add_all_frames_to_correct_as_cond is false in the reference's defaults
        let is_cond = is_init_cond_frame;
        let prev = {
            let temp = if is_cond {
                &obj.temp_output.cond_frame_outputs
            } else {
                &obj.temp_output.non_cond_frame_outputs
            };
            temp.get(&frame_idx)
                .or_else(|| obj.output.cond_frame_outputs.get(&frame_idx))
                .or_else(|| obj.output.non_cond_frame_outputs.get(&frame_idx))
                .map(|o| o.pred_masks.clone())
        };
        let prev_sam_mask_logits = match prev {
            Some(p) => {
                let v: Vec<f32> = p
                    .to_vec()?
                    .into_iter()
                    .map(|x| x.clamp(-32.0, 32.0))
                    .collect();
                Some(Tensor::from_slice(&v, p.shape(), p.device())?)
            }
            None => None,
        };
        let inputs = (Some(&point_inputs), None);
        let prev = prev_sam_mask_logits.as_ref();
        self.prompted_frame(
            state,
            obj_idx,
            frame_idx,
            (is_init_cond_frame, reverse),
            inputs,
            prev,
        )
    }

    /// Runs a prompted frame of one object (not yet into memory), keeps the result as a
    /// temporary output and returns every object's masks on that frame at video resolution.
    fn prompted_frame(
        &self,
        state: &mut InferenceState,
        obj_idx: usize,
        frame_idx: usize,
        (is_init_cond_frame, reverse): (bool, bool),
        inputs: (Option<&PointInputs>, Option<&Tensor>),
        prev_sam_mask_logits: Option<&Tensor>,
    ) -> Result<Tensor> {
        // add_all_frames_to_correct_as_cond is false in the reference's defaults
        let is_cond = is_init_cond_frame;
        let output = state.objects[obj_idx].output.clone();
        let out = self.run_single_frame_inference(
            state,
            &output,
            frame_idx,
            is_init_cond_frame,
            inputs,
            reverse,
            false,
            prev_sam_mask_logits,
        )?;
        let t = &mut state.objects[obj_idx].temp_output;
        let temp = if is_cond {
            &mut t.cond_frame_outputs
        } else {
            &mut t.non_cond_frame_outputs
        };
        temp.insert(frame_idx, out);
        self.consolidated_video_res(state, frame_idx, is_cond)
    }

    /// `add_new_mask`: a binary mask `mask_h × mask_w` (row-major, usually the video size) as
    /// object `obj_id`'s prompt on `frame_idx`, replacing its points there. The mask is resized
    /// to the model size as the reference does (antialiased bilinear, then `>= 0.5`) and taken
    /// as the frame's output (`use_mask_input_as_output_without_sam`). Returns the frame's
    /// masks at video resolution for every object, `[n_obj, 1, H, W]` logits.
    pub fn add_new_mask(
        &self,
        state: &mut InferenceState,
        frame_idx: usize,
        obj_id: i64,
        mask: &[bool],
        (mask_h, mask_w): (usize, usize),
    ) -> Result<Tensor> {
        if frame_idx >= state.num_frames {
            return Err(Error::arg(
                "frame_idx",
                format!("{frame_idx} is outside the {} frames", state.num_frames),
            ));
        }
        if mask_h == 0 || mask_w == 0 || mask.len() != mask_h * mask_w {
            return Err(Error::arg(
                "mask",
                format!(
                    "{} values for a {mask_h}×{mask_w} mask (it must be 2-D and non-empty)",
                    mask.len()
                ),
            ));
        }
        let s = self.model.config.image_size;
        let dev = state.device;
        let v: Vec<f32> = mask.iter().map(|&m| f32::from(u8::from(m))).collect();
        let orig = Tensor::from_slice(&v, &[1, 1, mask_h, mask_w], dev)?;
        let mask_inputs = if mask_h != s || mask_w != s {
            let r = interpolate_bilinear_aa(&orig, s, s)?.to_vec()?;
            let bin: Vec<f32> = r.iter().map(|&x| f32::from(u8::from(x >= 0.5))).collect();
            Tensor::from_slice(&bin, &[1, 1, s, s], dev)?
        } else {
            orig
        };
        let obj_idx = Self::obj_id_to_idx(state, obj_id);
        let obj = &mut state.objects[obj_idx];
        obj.mask_inputs.insert(frame_idx, mask_inputs.clone());
        obj.point_inputs.remove(&frame_idx);
        let tracking = obj.tracking_of(frame_idx);
        let inputs = (None, Some(&mask_inputs));
        self.prompted_frame(state, obj_idx, frame_idx, tracking, inputs, None)
    }

    /// `_consolidate_temp_output_across_obj(consolidate_at_video_res=True)`.
    fn consolidated_video_res(
        &self,
        state: &InferenceState,
        frame_idx: usize,
        is_cond: bool,
    ) -> Result<Tensor> {
        let (h, w) = (state.video_height, state.video_width);
        let mut planes = Vec::new();
        for obj in &state.objects {
            let temp = if is_cond {
                &obj.temp_output.cond_frame_outputs
            } else {
                &obj.temp_output.non_cond_frame_outputs
            };
            let out = temp
                .get(&frame_idx)
                .or_else(|| obj.output.cond_frame_outputs.get(&frame_idx))
                .or_else(|| obj.output.non_cond_frame_outputs.get(&frame_idx));
            planes.push(match out {
                Some(o) => o.pred_masks.upsample_bilinear(h, w)?,
                None => Tensor::full(&[1, 1, h, w], NO_OBJ_SCORE, state.device)?,
            });
        }
        Tensor::cat(&planes, 0)
    }

    /// `_run_single_frame_inference` (batch of one object).
    #[allow(clippy::too_many_arguments)]
    fn run_single_frame_inference(
        &self,
        state: &mut InferenceState,
        output_dict: &OutputDict,
        frame_idx: usize,
        is_init_cond_frame: bool,
        (point_inputs, mask_inputs): (Option<&PointInputs>, Option<&Tensor>),
        reverse: bool,
        run_mem_encoder: bool,
        prev_sam_mask_logits: Option<&Tensor>,
    ) -> Result<FrameOutput> {
        let feats = self.get_image_feature(state, frame_idx)?;
        let pts = point_inputs.map(std::slice::from_ref);
        let mut out = self.model.track_step(
            frame_idx,
            is_init_cond_frame,
            &feats,
            pts,
            mask_inputs,
            output_dict,
            state.num_frames,
            reverse,
            prev_sam_mask_logits,
            self.precision.memory_attention(),
        )?;
        if run_mem_encoder && self.model.config.num_maskmem > 0 {
            let high = out
                .pred_masks_high_res
                .take()
                .ok_or_else(|| Error::Other("missing high-res masks".into()))?;
            let (f, p) = self.model.encode_new_memory(
                &feats,
                &high,
                &out.object_score_logits,
                point_inputs.is_some(),
            )?;
            out.maskmem_features = Some(round_bf16(&f)?);
            out.maskmem_pos_enc = Some(self.cached_pos(state, p));
        }
        out.pred_masks_high_res = None;
        if self.fill_hole_area > 0 {
            out.pred_masks = fill_holes_in_mask_scores(&out.pred_masks, self.fill_hole_area)?;
        }
        Ok(out)
    }

    fn cached_pos(&self, state: &mut InferenceState, p: Tensor) -> Tensor {
        state.maskmem_pos_enc.get_or_insert(p).clone()
    }

    /// `propagate_in_video_preflight`: encodes the memory of prompted frames and moves them
    /// into the memory bank.
    fn preflight(&self, state: &mut InferenceState) -> Result<()> {
        if state.objects.is_empty() {
            return Err(Error::Other(
                "no prompt was given for any object; add a box or points first".into(),
            ));
        }
        let s = self.model.config.image_size;
        for oi in 0..state.objects.len() {
            for is_cond in [false, true] {
                let temp = {
                    let t = &mut state.objects[oi].temp_output;
                    std::mem::take(if is_cond {
                        &mut t.cond_frame_outputs
                    } else {
                        &mut t.non_cond_frame_outputs
                    })
                };
                for (frame_idx, mut out) in temp {
                    if out.maskmem_features.is_none() {
                        let high = out.pred_masks.upsample_bilinear(s, s)?;
                        let feats = self.get_image_feature(state, frame_idx)?;
                        let (f, p) = self.model.encode_new_memory(
                            &feats,
                            &high,
                            &out.object_score_logits,
                            true,
                        )?;
                        out.maskmem_features = Some(round_bf16(&f)?);
                        out.maskmem_pos_enc = Some(self.cached_pos(state, p));
                    }
                    let o = &mut state.objects[oi].output;
                    if is_cond {
                        o.cond_frame_outputs.insert(frame_idx, out);
                    } else {
                        o.non_cond_frame_outputs.insert(frame_idx, out);
                    }
                }
            }
            let o = &mut state.objects[oi].output;
            if o.cond_frame_outputs.is_empty() {
                return Err(Error::Other(format!(
                    "no prompt was given for object id {}",
                    state.obj_ids[oi]
                )));
            }
            let cond: Vec<usize> = o.cond_frame_outputs.keys().copied().collect();
            for t in cond {
                o.non_cond_frame_outputs.remove(&t);
            }
        }
        Ok(())
    }

    /// `propagate_in_video`: tracks every object from `start_frame_idx` (default: the first
    /// prompted frame) forward or in reverse over at most `max_frame_num_to_track` frames,
    /// calling `on_frame(frame_idx, masks [n_obj, 1, H, W] logits at video resolution)`.
    pub fn propagate_in_video(
        &self,
        state: &mut InferenceState,
        start_frame_idx: Option<usize>,
        max_frame_num_to_track: Option<usize>,
        reverse: bool,
        on_frame: &mut dyn FnMut(usize, &Tensor) -> Result<()>,
    ) -> Result<()> {
        self.preflight(state)?;
        let n = state.num_frames;
        let start = match start_frame_idx {
            Some(s) => s,
            None => state
                .objects
                .iter()
                .flat_map(|o| o.output.cond_frame_outputs.keys().copied())
                .min()
                .unwrap_or(0),
        };
        if start >= n {
            return Err(Error::arg(
                "start_frame_idx",
                format!("{start} is outside the {n} frames"),
            ));
        }
        let max = max_frame_num_to_track.unwrap_or(n);
        let order: Vec<usize> = if reverse {
            let end = start.saturating_sub(max);
            if start > 0 {
                (end..=start).rev().collect()
            } else {
                Vec::new()
            }
        } else {
            let end = (start + max).min(n - 1);
            (start..=end).collect()
        };
        let (h, w) = (state.video_height, state.video_width);
        for frame_idx in order {
            let mut per_obj = Vec::with_capacity(state.objects.len());
            for oi in 0..state.objects.len() {
                let cond = state.objects[oi]
                    .output
                    .cond_frame_outputs
                    .get(&frame_idx)
                    .map(|o| o.pred_masks.clone());
                let masks = match cond {
                    Some(m) => m,
                    None => {
                        let output = std::mem::take(&mut state.objects[oi].output);
                        let res = self.run_single_frame_inference(
                            state,
                            &output,
                            frame_idx,
                            false,
                            (None, None),
                            reverse,
                            true,
                            None,
                        );
                        state.objects[oi].output = output;
                        let out = res?;
                        let m = out.pred_masks.clone();
                        state.objects[oi]
                            .output
                            .non_cond_frame_outputs
                            .insert(frame_idx, out);
                        m
                    }
                };
                state.objects[oi].frames_tracked.insert(frame_idx, reverse);
                per_obj.push(masks);
            }
            let all = Tensor::cat(&per_obj, 0)?;
            let video_res = if all.dim(2) == h && all.dim(3) == w {
                all
            } else {
                all.upsample_bilinear(h, w)?
            };
            on_frame(frame_idx, &video_res)?;
        }
        Ok(())
    }

    /// `reset_state`: forgets every prompt, object and tracking result (keeps the frames).
    pub fn reset_state(&self, state: &mut InferenceState) {
        state.obj_ids.clear();
        state.objects.clear();
    }
}

/// `fill_holes_in_mask_scores`: background components (logit ≤ 0, 8-connected) of at most
/// `max_area` pixels get logit 0.1. Masks `[B, 1, h, w]`.
pub fn fill_holes_in_mask_scores(mask: &Tensor, max_area: usize) -> Result<Tensor> {
    let (b, h, w) = (mask.dim(0), mask.dim(2), mask.dim(3));
    let mut v = mask.contiguous()?.to_vec()?;
    let mut label = vec![usize::MAX; h * w];
    let mut stack = Vec::new();
    let mut comp = Vec::new();
    for p in 0..b {
        let plane = &mut v[p * h * w..(p + 1) * h * w];
        label.fill(usize::MAX);
        for start in 0..h * w {
            if plane[start] > 0.0 || label[start] != usize::MAX {
                continue;
            }
            comp.clear();
            stack.push(start);
            label[start] = start;
            while let Some(i) = stack.pop() {
                comp.push(i);
                let (y, x) = ((i / w) as i64, (i % w) as i64);
                for dy in -1..=1i64 {
                    for dx in -1..=1i64 {
                        let (ny, nx) = (y + dy, x + dx);
                        if ny < 0 || nx < 0 || ny >= h as i64 || nx >= w as i64 {
                            continue;
                        }
                        let j = ny as usize * w + nx as usize;
                        if plane[j] <= 0.0 && label[j] == usize::MAX {
                            label[j] = start;
                            stack.push(j);
                        }
                    }
                }
            }
            if comp.len() <= max_area {
                for &i in &comp {
                    plane[i] = 0.1;
                }
            }
        }
    }
    Tensor::from_slice(&v, mask.shape(), mask.device())
}
