//! The web page at `/` (one embedded HTML file: no CDN, works offline) and its API under
//! `/api/`. Files are decoded on the server by the same readers as `medsam infer`, so the page
//! shows and segments exactly what the command line would. A web session is a server session
//! (token in `X-Lease-Token`) whose labels hold several objects (1, 2, …).
//!
//! - `POST /api/open?name=FILE` (body: the file) → `{token, shape: [d, h, w], channels, model}`
//! - `GET /api/volume` → the uint8 volume (`d·h·w·channels` bytes)
//! - `POST /api/segment` `{z, label, box: [x0, y0, x1, y1], points: [[x, y, positive], …]}` →
//!   slice `z`'s labels (`h·w` bytes); the box/points are the object's whole prompt on that slice.
//!   With a volume model (MedSAM2) the prompt segments the whole volume in the background:
//!   202 `{propagating: true, total}`, then poll `GET /api/progress` → `{label, key, done, total,
//!   finished, error}`; `/api/labels` shows the frames tracked so far until it finishes
//! - `POST /api/undo` → `{z}` of the slice that changed (or null); 409 while a propagation runs
//! - `GET /api/labels?z=N` → slice `z`'s labels
//! - `GET /api/download` → PNG (2D: one object 0/255 as `medsam infer` writes it, several objects
//!   their labels) or NIfTI `.nii.gz` (3D: with the input NIfTI's header geometry or the DICOM
//!   series' position and orientation, as `medsam infer` writes its mask; else its spacing)

use super::engine::Prompt;
use super::session::{Propagation, Session};
use super::{blocking, lock, ApiError, AppState};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

const INDEX: &str = include_str!("web/index.html");

pub fn routes() -> Router<Arc<AppState>> {
    // The page and what it reads.
    let reads = Router::new()
        .route("/", get(|| async { Html(INDEX) }))
        .route("/api/volume", get(volume))
        .route("/api/labels", get(labels))
        .route("/api/progress", get(progress))
        .route("/api/download", get(download));
    // What changes a session.
    reads
        .route("/api/open", post(open))
        .route("/api/segment", post(segment))
        .route("/api/undo", post(undo))
}

fn session(st: &AppState, h: &HeaderMap) -> Result<Arc<Mutex<Session>>, ApiError> {
    st.session(
        h.get(super::nninteractive::LEASE_HEADER)
            .and_then(|v| v.to_str().ok()),
    )
}

/// `key=value` from the query string.
fn query<'a>(uri: &'a Uri, key: &str) -> Option<&'a str> {
    uri.query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Percent-decoding of a query value (file names).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn open(
    State(st): State<Arc<AppState>>,
    uri: Uri,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let name = unescape(query(&uri, "name").unwrap_or("upload.png"));
    if body.is_empty() {
        return Err(ApiError::bad("the uploaded file is empty"));
    }
    let token = st.claim(false)?;
    let sess = st.session(Some(&token))?;
    let st2 = st.clone();
    let r = blocking(move || {
        let v = (st2.opts.decoder)(&name, &body)?;
        let bytes = v.data.len();
        if bytes > st2.opts.max_image_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "{name}: {bytes} bytes decoded, over the limit of {}",
                    st2.opts.max_image_bytes
                ),
            ));
        }
        let out = json!({
            "shape": v.shape,
            "channels": v.channels,
            "model": st2.engine.name(),
            "points": st2.engine.supports_points(),
        });
        let mut s = lock(&sess);
        s.touch();
        s.set_volume(v);
        Ok(out)
    })
    .await;
    match r {
        Ok(mut v) => {
            v["token"] = json!(token);
            Ok(Json(v))
        }
        Err(e) => {
            st.release(&token);
            Err(e)
        }
    }
}

fn octets(data: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response()
}

async fn volume(State(st): State<Arc<AppState>>, h: HeaderMap) -> Result<Response, ApiError> {
    let s = session(&st, &h)?;
    let s = lock(&s);
    Ok(octets(s.volume()?.data.clone()))
}

fn slice_labels(s: &Session, z: usize) -> Result<Vec<u8>, ApiError> {
    let v = s.volume()?;
    if z >= v.shape[0] {
        return Err(ApiError::bad(format!(
            "slice {z} is outside the volume (0..{})",
            v.shape[0]
        )));
    }
    let (h, w) = v.plane_dims(0);
    let mut out = s.labels[z * h * w..(z + 1) * h * w].to_vec();
    if let Some(p) = &s.propagation {
        let p = lock(p);
        if p.outcome.is_none() {
            let live = &p.live[z * h * w..(z + 1) * h * w];
            for (o, &m) in out.iter_mut().zip(live) {
                if m > 0 {
                    *o = p.label;
                }
            }
        }
    }
    Ok(out)
}

async fn labels(
    State(st): State<Arc<AppState>>,
    h: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let z: usize = query(&uri, "z")
        .and_then(|z| z.parse().ok())
        .ok_or_else(|| ApiError::bad("labels: give ?z=<slice index>"))?;
    let s = session(&st, &h)?;
    let s = lock(&s);
    Ok(octets(slice_labels(&s, z)?))
}

fn num(v: &Value, what: &str) -> Result<f64, ApiError> {
    v.as_f64()
        .filter(|x| x.is_finite())
        .ok_or_else(|| ApiError::bad(format!("{what} must be a number, found {v}")))
}

async fn segment(
    State(st): State<Arc<AppState>>,
    h: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let sess = session(&st, &h)?;
    let p: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad(format!("request body is not JSON: {e}")))?;
    let z = p
        .get("z")
        .and_then(|z| z.as_u64())
        .ok_or_else(|| ApiError::bad("z must be a slice index"))? as usize;
    let label = p
        .get("label")
        .and_then(|l| l.as_u64())
        .filter(|&l| (1..=255).contains(&l))
        .ok_or_else(|| ApiError::bad("label must be an integer in 1..=255"))? as u8;
    let (hh, ww) = {
        let s = lock(&sess);
        let v = s.volume()?;
        if z >= v.shape[0] {
            return Err(ApiError::bad(format!(
                "slice {z} is outside the volume (0..{})",
                v.shape[0]
            )));
        }
        v.plane_dims(0)
    };
    let bbox = match p.get("box") {
        None | Some(Value::Null) => None,
        Some(b) => {
            let a = b
                .as_array()
                .filter(|a| a.len() == 4)
                .ok_or_else(|| ApiError::bad("box must be [x0, y0, x1, y1]"))?;
            let raw = [
                num(&a[0], "box")? as f32,
                num(&a[1], "box")? as f32,
                num(&a[2], "box")? as f32,
                num(&a[3], "box")? as f32,
            ];
            Some(crate::pipeline::infer::sam::check_box(raw, hh, ww)?.bbox)
        }
    };
    let mut points = Vec::new();
    for pt in p
        .get("points")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
    {
        let a = pt
            .as_array()
            .filter(|a| a.len() == 3)
            .ok_or_else(|| ApiError::bad("each point must be [x, y, positive]"))?;
        let (x, y) = (num(&a[0], "point x")?, num(&a[1], "point y")?);
        if x < 0.0 || y < 0.0 || x >= ww as f64 || y >= hh as f64 {
            return Err(ApiError::bad(format!(
                "point ({x}, {y}) lies outside the {ww}×{hh} image"
            )));
        }
        points.push((x as f32, y as f32, a[2].as_bool().unwrap_or(true)));
    }
    if bbox.is_none() && points.is_empty() {
        return Err(ApiError::bad("give a box or at least one point"));
    }
    let prompt = Prompt { bbox, points };
    if st.engine.propagates() {
        return start_propagation(st, sess, z, label, prompt);
    }
    blocking(move || {
        let mut s = lock(&sess);
        s.touch();
        s.segment_plane(&st.engine, &st.compute, (0, z), label, prompt, false)?;
        Ok(octets(slice_labels(&s, z)?))
    })
    .await
}

/// Whether a volume model's propagation is running in the session.
fn propagating(s: &Session) -> bool {
    s.propagation
        .as_ref()
        .is_some_and(|p| lock(p).outcome.is_none())
}

/// Starts a volume model's propagation of `prompt` (on slice `z`) in the background; the model
/// runs under `compute` and the result becomes one undo step of the session.
fn start_propagation(
    st: Arc<AppState>,
    sess: Arc<Mutex<Session>>,
    z: usize,
    label: u8,
    prompt: Prompt,
) -> Result<Response, ApiError> {
    let (vol, shape, job, generation) = {
        let mut s = lock(&sess);
        if propagating(&s) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "a propagation is still running in this session: wait for it to finish",
            ));
        }
        let v = s.volume()?;
        if v.channels != 1 {
            return Err(ApiError::bad(
                "MedSAM2 segments grey volumes; this image is RGB",
            ));
        }
        let [d, h, w] = v.shape;
        let (vol, shape) = (v.data.clone(), (d, h, w));
        let job = Arc::new(Mutex::new(Propagation {
            label,
            key: z,
            frames: [0, d + 1],
            live: vec![0; d * h * w],
            outcome: None,
        }));
        s.touch();
        s.propagation = Some(job.clone());
        s.jobs += 1;
        (vol, shape, job, s.generation)
    };
    let total = shape.0 + 1;
    tokio::task::spawn_blocking(move || {
        let _running = super::JobGuard(&sess);
        let (_, h, w) = shape;
        let result = {
            let _g = lock(&st.compute);
            st.engine
                .propagate(&vol, shape, z, &prompt, &mut |step, t, m| {
                    let mut p = lock(&job);
                    p.live[t * h * w..(t + 1) * h * w].copy_from_slice(m);
                    p.frames[0] = step + 1;
                })
        };
        let mut s = lock(&sess);
        let current = s.propagation.as_ref().is_some_and(|p| Arc::ptr_eq(p, &job));
        let mut p = lock(&job);
        p.outcome = Some(match result {
            // Undo is refused while it runs; a reset or a new image (through the v2 endpoints
            // with this token) makes its result stale.
            Ok(_) if s.generation != generation => Err(
                "dropped: the session was reset or given a new image while this object was propagating"
                    .to_string(),
            ),
            Ok(mask) => {
                if current && s.labels.len() == mask.len() {
                    s.set_label_mask(label, &mask);
                }
                p.live = mask;
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        });
    });
    let body = json!({ "propagating": true, "total": total, "key": z });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

async fn progress(State(st): State<Arc<AppState>>, h: HeaderMap) -> Result<Json<Value>, ApiError> {
    let s = session(&st, &h)?;
    let s = lock(&s);
    let p = s
        .propagation
        .as_ref()
        .ok_or_else(|| ApiError::bad("no propagation was started in this session"))?;
    let p = lock(p);
    Ok(Json(json!({
        "label": p.label,
        "key": p.key,
        "done": p.frames[0],
        "total": p.frames[1],
        "finished": p.outcome.is_some(),
        "error": p.outcome.as_ref().and_then(|o| o.as_ref().err()),
    })))
}

async fn undo(State(st): State<Arc<AppState>>, h: HeaderMap) -> Result<Json<Value>, ApiError> {
    let s = session(&st, &h)?;
    let mut s = lock(&s);
    if propagating(&s) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "a propagation is running in this session: undo once it has finished",
        ));
    }
    s.touch();
    let z = s.undo().map(|b| b[0][0]);
    Ok(Json(json!({ "z": z })))
}

async fn download(State(st): State<Arc<AppState>>, h: HeaderMap) -> Result<Response, ApiError> {
    let sess = session(&st, &h)?;
    blocking(move || {
        let s = lock(&sess);
        let v = s.volume()?;
        let [d, hh, ww] = v.shape;
        let dir = std::env::temp_dir().join(format!(
            "medsam-serve-dl-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| ApiError::bad(e.to_string()))?;
        let (name, path) = if d == 1 {
            let max = s.labels.iter().copied().max().unwrap_or(0);
            let px: Vec<u8> = if max <= 1 {
                s.labels
                    .iter()
                    .map(|&l| if l > 0 { 255 } else { 0 })
                    .collect()
            } else {
                s.labels.clone()
            };
            let path = dir.join("seg.png");
            image::GrayImage::from_raw(ww as u32, hh as u32, px)
                .ok_or_else(|| ApiError::bad("label map has the wrong size"))?
                .save(&path)
                .map_err(|e| ApiError::bad(format!("cannot write PNG: {e}")))?;
            ("seg.png", path)
        } else {
            let path = dir.join("seg.nii.gz");
            let geometry = v
                .geometry
                .clone()
                .unwrap_or_else(|| crate::io::nifti::NiftiGeometry::from_affine(v.spacing, None));
            crate::io::nifti::write_nifti_gz_geometry(&path, [d, hh, ww], &s.labels, &geometry)
                .map_err(|e| ApiError::bad(format!("cannot write NIfTI: {e}")))?;
            ("seg.nii.gz", path)
        };
        let bytes = std::fs::read(&path);
        let _ = std::fs::remove_dir_all(&dir);
        let bytes = bytes.map_err(|e| ApiError::bad(e.to_string()))?;
        let mut r = octets(bytes);
        if let Ok(v) = format!("attachment; filename=\"{name}\"").parse() {
            r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
        }
        Ok(r)
    })
    .await
}
