//! The nnInteractive v2 protocol, server side, as `nninteractive-client` 2.6.0 speaks it
//! (`nnInteractive/inference/remote/`): lease-token sessions (`X-Lease-Token`), images and masks
//! as `NNIA` arrays with JSON metadata in `X-Meta`, and prediction answers that carry only the
//! changed box of the target buffer (`X-Meta: {"ran_prediction", "bbox", "dtype", "shape"}`,
//! body = that sub-array).
//!
//! Mapping onto a 2D model: the image is `(1, n0, n1, n2)`; a box one voxel thick along an axis
//! is a 2D box on that slice (see `session.rs` for the plane convention), segmented and written
//! into the buffer as 1 (a negative box clears its mask instead). A point refines the object on
//! the slice last boxed when it lies on it (else the axis-0 slice through it), together with that
//! slice's box (a negative point is a negative click of that prompt). Lasso, scribble and 3D
//! boxes are not offered (`supported_interactions`) and are refused with 400.
//!
//! MedSAM2 (`--model-type medsam2`) answers as nnInteractive's own 3D model does: the same box or
//! point prompt on its slice is the key slice of `medsam infer --model-type medsam2`'s 3D recipe,
//! run through every slice along that axis, and the object's mask in the whole buffer is replaced
//! by the result (a negative box clears the result's voxels instead; a negative point is a
//! negative click of the slice's prompt, as above); the answer carries the changed box of the
//! whole volume. A box on axis-0 slice `z` with corners `x0, y0, x1, y1` (half-open) gives the
//! voxels of `medsam infer --model-type medsam2 --box3d [x0,y0,z,x1,y1,z]` (inclusive z) on the
//! same volume saved as NIfTI. The image becomes uint8 as that command makes a NIfTI volume
//! (integers in 0–255 kept, else a 0.5–99.5th percentile clip; slice models: integers kept,
//! else min-max, as `medsam infer` for them): [`super::engine::Engine::volume_u8`]. Real weights
//! take seconds per slice on a CPU: give the client a `read_timeout` (60 s by default) and the
//! server a `--request-timeout` (300 s) that cover the volume. The session is not locked while
//! MedSAM2 runs: if it gets a new image, a reset, an undo or an initial segmentation meanwhile,
//! the prompt's result is dropped and the request answered 409 ([`super::segment_prompt`]).
//!
//! Leases: `/claim` leases are heartbeating clients', which expire after `liveness_timeout`
//! without any request as well as after `idle_timeout` without a real action.

use super::engine::Prompt;
use super::nnia::{self, DType};
use super::session::{Plane, Session, Volume};
use super::{blocking, lock, segment_prompt, ApiError, AppState, Deadline};
use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;

pub const LEASE_HEADER: &str = "x-lease-token";
pub const META_HEADER: &str = "x-meta";
/// The label nnInteractive's one-object target buffer uses.
const OBJECT: u8 = 1;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"ok": true})) }))
        .route("/capabilities", get(capabilities))
        .route("/claim", post(claim))
        .route("/release", post(release))
        .route("/heartbeat", post(heartbeat))
        .route("/lease_status", get(lease_status))
        .route("/set_image", post(set_image))
        .route("/set_target_buffer", post(set_target_buffer))
        .route("/set_do_autozoom", post(set_do_autozoom))
        .route("/reset_interactions", post(reset_interactions))
        .route("/undo", post(undo))
        .route("/predict", post(predict))
        .route("/add_bbox_interaction", interaction(Interaction::Bbox))
        .route("/add_point_interaction", interaction(Interaction::Point))
        .route("/add_scribble_interaction", post(unsupported_scribble))
        .route("/add_lasso_interaction", post(unsupported_lasso))
        .route("/add_initial_seg_interaction", post(add_initial_seg))
}

/// The POST route of an interaction kind ([`interact`]).
fn interaction(kind: Interaction) -> MethodRouter<Arc<AppState>> {
    post(
        move |State(st): State<Arc<AppState>>,
              Extension(dl): Extension<Deadline>,
              h: HeaderMap,
              body: Bytes| interact(st, dl, h, body, kind),
    )
}

fn lease(h: &HeaderMap) -> Option<&str> {
    h.get(LEASE_HEADER).and_then(|v| v.to_str().ok())
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("request body is not JSON: {e}")))
}

fn meta(h: &HeaderMap) -> Result<Value, ApiError> {
    match h.get(META_HEADER) {
        None => Ok(json!({})),
        Some(v) => {
            let s = v
                .to_str()
                .map_err(|_| ApiError::bad("X-Meta header is not ASCII"))?;
            serde_json::from_str(s).map_err(|e| ApiError::bad(format!("bad X-Meta: {e}")))
        }
    }
}

fn flag(v: &Value, key: &str, default: bool) -> Result<bool, ApiError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(ApiError::bad(format!(
            "{key} must be true or false, found {other}"
        ))),
    }
}

fn required_flag(v: &Value, key: &str) -> Result<bool, ApiError> {
    if v.get(key).is_none() {
        return Err(ApiError::bad(format!("missing required field: {key}")));
    }
    flag(v, key, false)
}

/// A coordinate given as a JSON number (rounded to the nearest voxel).
fn coord(v: &Value, what: &str) -> Result<i64, ApiError> {
    v.as_f64()
        .filter(|x| x.is_finite() && x.abs() < 1e12)
        .map(|x| x.round() as i64)
        .ok_or_else(|| ApiError::bad(format!("{what} must be a number, found {v}")))
}

async fn capabilities(State(st): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "supported_interactions": {
            "points": st.engine.supports_points(),
            "bbox2d": true,
            "bbox3d": false,
            "lasso": false,
            "scribble": false,
        },
        "channel_mapping": {"prev_seg": 0, "bbox2d": [1, 2], "points": [3, 4]},
        "num_interaction_channels": 5,
        "supports_initial_label": true,
        "supports_zero_shot_label_refinement": false,
        "preferred_scribble_thickness": [2, 2, 2],
        "interaction_decay": null,
        "patch_size": null,
        "do_autozoom": false,
        "inference_session_version": concat!("medsam-rs ", env!("CARGO_PKG_VERSION")),
        "license": "Apache-2.0",
        "supports_undo": true,
        "model": st.engine.name(),
        // What one box or point segments: its slice, or (MedSAM2) the whole volume.
        "prediction_extent": if st.engine.propagates() { "volume" } else { "slice" },
    }))
}

async fn claim(State(st): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let token = st.claim(true)?;
    Ok(Json(json!({
        "lease_token": token,
        "idle_timeout_seconds": st.opts.idle_timeout.as_secs_f64(),
        "liveness_timeout_seconds": st.opts.liveness_timeout.as_secs_f64(),
        "max_sessions": st.opts.max_sessions,
    }))
    .into_response())
}

async fn release(State(st): State<Arc<AppState>>, h: HeaderMap) -> Json<Value> {
    if let Some(t) = lease(&h) {
        st.release(t);
    }
    Json(json!({"released": true}))
}

fn remaining(st: &AppState, s: &Session) -> f64 {
    (st.opts.idle_timeout.as_secs_f64() - s.last_active.elapsed().as_secs_f64()).max(0.0)
}

async fn heartbeat(State(st): State<Arc<AppState>>, h: HeaderMap) -> Result<Json<Value>, ApiError> {
    let s = st.session(lease(&h))?;
    let r = remaining(&st, &lock(&s));
    Ok(Json(json!({"remaining_seconds": r})))
}

async fn lease_status(
    State(st): State<Arc<AppState>>,
    h: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let s = st.session(lease(&h))?;
    let r = remaining(&st, &lock(&s));
    Ok(Json(json!({
        "remaining_seconds": r,
        "idle_timeout_seconds": st.opts.idle_timeout.as_secs_f64(),
    })))
}

async fn set_image(
    State(st): State<Arc<AppState>>,
    h: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let sess = st.session(lease(&h))?;
    let m = meta(&h)?;
    let max = st.opts.max_image_bytes;
    blocking(move || {
        let a = nnia::unpack(&body, max).map_err(ApiError::bad)?;
        let &[c, n0, n1, n2] = a.shape.as_slice() else {
            return Err(ApiError::bad(format!(
                "image must be 4D (channels, x, y, z), found shape {:?}",
                a.shape
            )));
        };
        if c != 1 {
            return Err(ApiError::bad(format!(
                "image has {c} channels; MedSAM models take one (shape {:?})",
                a.shape
            )));
        }
        if n0 == 0 || n1 == 0 || n2 == 0 {
            return Err(ApiError::bad(format!(
                "image is empty: shape {:?}",
                a.shape
            )));
        }
        let spacing = m
            .get("image_properties")
            .and_then(|p| p.get("spacing"))
            .and_then(|s| s.as_array())
            .filter(|s| s.len() == 3)
            .map(|s| std::array::from_fn(|i| s[i].as_f64().unwrap_or(1.0)))
            .unwrap_or([1.0; 3]);
        let n = n0 * n1 * n2;
        let data = st.engine.volume_u8(|i| a.dtype.read_f64(&a.data, i), n)?;
        let mut s = lock(&sess);
        s.touch();
        s.set_volume(Volume {
            shape: [n0, n1, n2],
            channels: 1,
            data,
            spacing,
            geometry: None,
        });
        Ok(Json(json!({"original_image_shape": a.shape})))
    })
    .await
}

async fn set_target_buffer(
    State(st): State<Arc<AppState>>,
    h: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let sess = st.session(lease(&h))?;
    let p = parse_json(&body)?;
    let shape: Vec<usize> = p
        .get("shape")
        .and_then(|s| s.as_array())
        .ok_or_else(|| ApiError::bad("missing required field: shape (a list of 3 integers)"))?
        .iter()
        .map(|d| d.as_u64().filter(|&d| d > 0).map(|d| d as usize))
        .collect::<Option<_>>()
        .ok_or_else(|| ApiError::bad("shape must contain positive integers"))?;
    let name = p
        .get("dtype")
        .and_then(|d| d.as_str())
        .ok_or_else(|| ApiError::bad("missing required field: dtype"))?;
    let dtype = DType::parse(name)
        .filter(|d| d.is_integral())
        .ok_or_else(|| {
            ApiError::bad(format!(
                "unsupported dtype {name:?}: the target buffer must be bool or an integer type"
            ))
        })?;
    let mut s = lock(&sess);
    s.check_shape(&shape, "target buffer")?;
    s.touch();
    s.target_dtype = Some(dtype);
    s.reset();
    Ok(Json(json!({})))
}

/// Marks the lease's session active, applies `f` to it and answers `{}`.
fn touch_session(
    st: &AppState,
    h: &HeaderMap,
    f: impl FnOnce(&mut Session),
) -> Result<Json<Value>, ApiError> {
    let s = st.session(lease(h))?;
    let mut s = lock(&s);
    s.touch();
    f(&mut s);
    Ok(Json(json!({})))
}

async fn set_do_autozoom(
    State(st): State<Arc<AppState>>,
    h: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    // Autozoom is nnInteractive's patch strategy; our models see whole slices anyway.
    touch_session(&st, &h, |_| {})
}

async fn reset_interactions(
    State(st): State<Arc<AppState>>,
    h: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    touch_session(&st, &h, Session::reset)
}

/// The answer to an interaction: the changed region of the target buffer, in its type.
fn prediction_response(
    s: &Session,
    ran: bool,
    bbox: Option<[[usize; 2]; 3]>,
) -> Result<Response, ApiError> {
    let (Some(b), Some(dtype)) = (bbox.filter(|_| ran), s.target_dtype) else {
        return Ok(with_meta(
            json!({"ran_prediction": ran, "bbox": null}),
            Vec::new(),
        ));
    };
    let labels = s.read_region(b);
    let size = dtype.size();
    let mut data = vec![0u8; labels.len() * size];
    for (i, &l) in labels.iter().enumerate() {
        // Little-endian: the value's low byte first, the rest zero (labels are small).
        data[i * size] = l;
    }
    let shape: Vec<usize> = b.iter().map(|[lo, hi]| hi - lo).collect();
    let body = nnia::pack(&nnia::Array {
        shape: shape.clone(),
        dtype,
        data,
    })
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(with_meta(
        json!({"ran_prediction": true, "bbox": b, "dtype": dtype.name(), "shape": shape}),
        body,
    ))
}

fn with_meta(meta: Value, body: Vec<u8>) -> Response {
    let mut r = (
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        body,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&meta.to_string()) {
        r.headers_mut().insert(META_HEADER, v);
    }
    r
}

async fn undo(State(st): State<Arc<AppState>>, h: HeaderMap) -> Result<Response, ApiError> {
    let s = st.session(lease(&h))?;
    let mut s = lock(&s);
    s.touch();
    let b = s.undo();
    prediction_response(&s, b.is_some(), b)
}

/// Runs a prompt on a plane ([`segment_prompt`]: that slice, or the volume with MedSAM2) and
/// answers with the changed region; with `run` false it is kept for `/predict`.
async fn run_prompt(
    st: Arc<AppState>,
    sess: Arc<std::sync::Mutex<Session>>,
    (plane, prompt, subtract): (Plane, Prompt, bool),
    run: bool,
    deadline: Deadline,
) -> Result<Response, ApiError> {
    blocking(move || {
        {
            let mut s = lock(&sess);
            s.touch();
            if !run {
                s.pending = Some((plane, prompt, subtract));
                return prediction_response(&s, false, None);
            }
            s.pending = None;
        }
        let b = segment_prompt(&st, &sess, plane, OBJECT, prompt, subtract, deadline)?;
        prediction_response(&lock(&sess), true, b)
    })
    .await
}

async fn predict(
    State(st): State<Arc<AppState>>,
    Extension(dl): Extension<Deadline>,
    h: HeaderMap,
) -> Result<Response, ApiError> {
    let sess = st.session(lease(&h))?;
    let pending = lock(&sess).pending.take();
    match pending {
        None => prediction_response(&lock(&sess), false, None),
        Some(p) => run_prompt(st, sess, p, true, dl).await,
    }
}

/// The three-element array `key` of a request (one entry per axis).
fn triple<'a>(p: &'a Value, key: &str, form: &str) -> Result<&'a [Value], ApiError> {
    p.get(key)
        .and_then(|c| c.as_array())
        .filter(|c| c.len() == 3)
        .map(|c| c.as_slice())
        .ok_or_else(|| ApiError::bad(format!("{key} must be {form}")))
}

/// The interactions a box/point model answers.
#[derive(Clone, Copy)]
enum Interaction {
    Bbox,
    Point,
}

/// An interaction. Without a lease token the request comes from the SlicerNNInteractive
/// extension, which uses the same paths.
async fn interact(
    st: Arc<AppState>,
    deadline: Deadline,
    h: HeaderMap,
    body: Bytes,
    kind: Interaction,
) -> Result<Response, ApiError> {
    if lease(&h).is_none() {
        return match kind {
            Interaction::Bbox => super::slicer::add_bbox(st, deadline, body).await,
            Interaction::Point => super::slicer::add_point(st, deadline, body).await,
        };
    }
    let sess = st.session(lease(&h))?;
    let p = parse_json(&body)?;
    let include = required_flag(&p, "include_interaction")?;
    let run = flag(&p, "run_prediction", true)?;
    let (plane, prompt, subtract) = match kind {
        Interaction::Bbox => {
            let (plane, prompt) = bbox_prompt(&sess, &p)?;
            (plane, prompt, !include)
        }
        Interaction::Point => {
            let c = triple(&p, "coordinates", "[i, j, k]")?;
            let c = [
                coord(&c[0], "coordinates")?,
                coord(&c[1], "coordinates")?,
                coord(&c[2], "coordinates")?,
            ];
            let (plane, prompt) = lock(&sess).point_prompt(c, include, OBJECT)?;
            (plane, prompt, false)
        }
    };
    run_prompt(st, sess, (plane, prompt, subtract), run, deadline).await
}

/// A 2D box interaction's plane and prompt.
fn bbox_prompt(sess: &std::sync::Mutex<Session>, p: &Value) -> Result<(Plane, Prompt), ApiError> {
    let coords = triple(p, "bbox_coords", "[[lo, hi], [lo, hi], [lo, hi]]")?;
    let mut b = [[0i64; 2]; 3];
    for (d, pair) in coords.iter().enumerate() {
        let pair = pair
            .as_array()
            .filter(|p| p.len() == 2)
            .ok_or_else(|| ApiError::bad(format!("bbox_coords[{d}] must be [lo, hi]")))?;
        b[d] = [
            coord(&pair[0], "bbox_coords")?,
            coord(&pair[1], "bbox_coords")?,
        ];
        if b[d][1] <= b[d][0] {
            return Err(ApiError::bad(format!(
                "bbox_coords[{d}] = {:?} is empty (need lo < hi, half-open)",
                b[d]
            )));
        }
    }
    let Some(axis) = (0..3).find(|&d| b[d][1] - b[d][0] == 1) else {
        return Err(ApiError::bad(format!(
            "bbox_coords {b:?} is a 3D box; this model takes 2D boxes (one voxel thick along the slice axis; capability bbox3d is false)"
        )));
    };
    let lo = b.map(|p| p[0]);
    let hi = b.map(|p| p[1]);
    let (plane, bbox) = lock(sess)
        .volume()?
        .plane_box(axis, lo, hi)
        .map_err(|e| ApiError::bad(format!("bbox_coords {b:?}: {e}")))?;
    let prompt = Prompt {
        bbox: Some(bbox),
        points: Vec::new(),
    };
    Ok((plane, prompt))
}

async fn unsupported_scribble() -> ApiError {
    unsupported("scribble")
}

async fn unsupported_lasso() -> ApiError {
    unsupported("lasso")
}

fn unsupported(kind: &str) -> ApiError {
    ApiError::bad(format!(
        "{kind} interactions are not supported by this server's model (MedSAM takes boxes and points; see /capabilities)"
    ))
}

async fn add_initial_seg(
    State(st): State<Arc<AppState>>,
    h: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let sess = st.session(lease(&h))?;
    let max = st.opts.max_image_bytes;
    blocking(move || {
        let a = nnia::unpack(&body, max).map_err(ApiError::bad)?;
        let mut s = lock(&sess);
        s.touch();
        s.check_shape(&a.shape, "initial segmentation")?;
        let labels = (0..a.len())
            .map(|i| u8::from(a.dtype.read_f64(&a.data, i) != 0.0) * OBJECT)
            .collect();
        s.set_labels(labels);
        // Nothing is predicted: the client mirrors the buffer itself.
        prediction_response(&s, false, None)
    })
    .await
}
