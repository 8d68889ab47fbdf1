//! The endpoints of `nninteractive-slicer-server` 0.3.2, as the SlicerNNInteractive extension
//! (before it moved to the v2 protocol) calls them. There is one implicit session, replaced by
//! each `upload_image`.
//!
//! - `POST /upload_image`: multipart field `file` = `np.save` bytes of the (i, j, k) volume
//! - `POST /upload_segment`: multipart field `file` = gzip of `np.save` bytes of the mask
//!   (all zero: reset)
//! - `POST /add_point_interaction` `{voxel_coord: [i, j, k], positive_click}`
//! - `POST /add_bbox_interaction` `{outer_point_one, outer_point_two, positive_click}`: two
//!   corners, equal along the slice axis
//! - `POST /add_lasso_interaction`, `/add_scribble_interaction`: refused (400)
//!
//! The interaction paths are the v2 protocol's too: requests without `X-Lease-Token` are these.
//!
//! Interactions answer with the whole mask: `np.packbits` (most significant bit first) of the
//! binary volume, gzip-compressed, with `Content-Encoding: gzip`.
//!
//! Prompts mean what they mean in the v2 protocol ([`super::nninteractive`]): with a slice model
//! a box or click segments its slice; with MedSAM2 it is the key slice of `medsam infer
//! --model-type medsam2`'s 3D recipe and the object is replaced in the whole volume (a negative
//! box clears the result's voxels; a negative click is a negative point of the slice's prompt).
//! Uploaded volumes become uint8 as `medsam infer` converts that model's NIfTI input
//! ([`super::engine::Engine::volume_u8`]).

use super::engine::Prompt;
use super::session::{Plane, Session, Volume};
use super::{blocking, lock, segment_prompt, ApiError, AppState, Deadline};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

const OBJECT: u8 = 1;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/upload_image", post(upload_image))
        .route("/upload_segment", post(upload_segment))
    // add_point/bbox/lasso/scribble share their paths with the v2 protocol, whose handlers
    // pass requests without a lease token here.
}

/// The `name` field of a `multipart/form-data` body.
pub fn multipart_field(headers: &HeaderMap, body: &[u8], name: &str) -> Result<Vec<u8>, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = ct
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))
        .map(|b| b.trim_matches('"'))
        .filter(|b| !b.is_empty() && b.len() <= 200)
        .ok_or_else(|| ApiError::bad("expected a multipart/form-data body with a boundary"))?;
    let delim = format!("--{boundary}").into_bytes();
    let find = |hay: &[u8], needle: &[u8], from: usize| -> Option<usize> {
        hay.get(from..)?
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    let mut pos =
        find(body, &delim, 0).ok_or_else(|| ApiError::bad("multipart body has no parts"))?;
    loop {
        pos += delim.len();
        if body.get(pos..pos + 2) == Some(b"--") {
            break;
        }
        let head_end = find(body, b"\r\n\r\n", pos)
            .ok_or_else(|| ApiError::bad("multipart part without headers"))?;
        let head = String::from_utf8_lossy(&body[pos..head_end]).to_ascii_lowercase();
        let start = head_end + 4;
        let mut end_delim = b"\r\n".to_vec();
        end_delim.extend_from_slice(&delim);
        let end = find(body, &end_delim, start)
            .ok_or_else(|| ApiError::bad("multipart part is not terminated"))?;
        let wanted = format!("name=\"{}\"", name.to_ascii_lowercase());
        if head.contains(&wanted) {
            return Ok(body[start..end].to_vec());
        }
        pos = end + 2;
    }
    Err(ApiError::bad(format!(
        "multipart body has no field {name:?}"
    )))
}

fn slicer_session(st: &AppState) -> Result<Arc<Mutex<Session>>, ApiError> {
    let token = lock(&st.slicer_session).clone();
    match token {
        Some(t) => st.session(Some(&t)).map_err(|_| {
            ApiError::bad("No image uploaded (or it expired): call /upload_image first")
        }),
        None => Err(ApiError::bad("No image uploaded: call /upload_image first")),
    }
}

fn gunzip(b: &[u8], max: usize) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ApiError::bad(format!("gzip decompression failed: {e}")))?;
    if out.len() > max {
        return Err(ApiError::bad(format!(
            "decompressed file exceeds {max} bytes"
        )));
    }
    Ok(out)
}

fn parse_npy(bytes: &[u8]) -> Result<crate::io::npy::NpyArray, ApiError> {
    crate::io::npy::parse_npy(bytes, std::path::Path::new("upload.npy"))
        .map_err(|e| ApiError::bad(format!("not a .npy array: {e}")))
}

async fn upload_image(
    State(st): State<Arc<AppState>>,
    h: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let file = multipart_field(&h, &body, "file")?;
    let st2 = st.clone();
    let vol = blocking(move || {
        let a = parse_npy(&file)?;
        let &[n0, n1, n2] = a.shape.as_slice() else {
            return Err(ApiError::bad(format!(
                "the image must be a 3D array, found shape {:?}",
                a.shape
            )));
        };
        if n0 * n1 * n2 == 0 || n0 * n1 * n2 > st2.opts.max_image_bytes {
            return Err(ApiError::bad(format!(
                "image shape {:?} is empty or too large",
                a.shape
            )));
        }
        let v = a.to_f64();
        Ok(Volume {
            shape: [n0, n1, n2],
            channels: 1,
            data: st2.engine.volume_u8(|i| v[i], v.len())?,
            spacing: [1.0; 3],
            geometry: None,
        })
    })
    .await?;
    let old = lock(&st.slicer_session).take();
    if let Some(t) = old {
        st.release(&t);
    }
    let token = st.claim(false)?;
    let s = st.session(Some(&token))?;
    {
        let mut s = lock(&s);
        s.touch();
        s.set_volume(vol);
    }
    *lock(&st.slicer_session) = Some(token);
    Ok(Json(json!({"status": "ok"})))
}

async fn upload_segment(
    State(st): State<Arc<AppState>>,
    h: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let sess = slicer_session(&st)?;
    let file = multipart_field(&h, &body, "file")?;
    let max = st.opts.max_image_bytes;
    blocking(move || {
        let a = parse_npy(&gunzip(&file, max)?)?;
        let mut s = lock(&sess);
        s.touch();
        s.check_shape(&a.shape, "segment")?;
        let v = a.to_f64();
        if v.iter().all(|&x| x == 0.0) {
            s.reset();
        } else {
            s.set_labels(v.iter().map(|&x| u8::from(x != 0.0) * OBJECT).collect());
        }
        Ok(Json(json!({"status": "ok"})))
    })
    .await
}

/// The whole mask, packed 8 voxels a byte (MSB first) and gzipped.
fn mask_response(s: &Session) -> Result<Response, ApiError> {
    let mut packed = vec![0u8; s.labels.len().div_ceil(8)];
    for (i, &l) in s.labels.iter().enumerate() {
        if l != 0 {
            packed[i / 8] |= 0x80 >> (i % 8);
        }
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&packed)
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let body = gz.finish().map_err(|e| ApiError::bad(e.to_string()))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::CONTENT_ENCODING, "gzip"),
        ],
        body,
    )
        .into_response())
}

fn ints(v: &Value, key: &str) -> Result<[i64; 3], ApiError> {
    let a = v
        .get(key)
        .and_then(|a| a.as_array())
        .filter(|a| a.len() == 3)
        .ok_or_else(|| ApiError::bad(format!("{key} must be [i, j, k]")))?;
    let mut out = [0i64; 3];
    for (o, x) in out.iter_mut().zip(a) {
        *o = x
            .as_f64()
            .filter(|f| f.is_finite() && f.abs() < 1e12)
            .ok_or_else(|| ApiError::bad(format!("{key} must hold numbers")))?
            .round() as i64;
    }
    Ok(out)
}

fn positive(v: &Value) -> Result<bool, ApiError> {
    v.get("positive_click")
        .and_then(|b| b.as_bool())
        .ok_or_else(|| ApiError::bad("positive_click must be true or false"))
}

fn body_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("request body is not JSON: {e}")))
}

pub async fn add_bbox(
    st: Arc<AppState>,
    deadline: Deadline,
    body: Bytes,
) -> Result<Response, ApiError> {
    let sess = slicer_session(&st)?;
    let p = body_json(&body)?;
    let (a, b, pos) = (
        ints(&p, "outer_point_one")?,
        ints(&p, "outer_point_two")?,
        positive(&p)?,
    );
    let lo: [i64; 3] = std::array::from_fn(|d| a[d].min(b[d]));
    let hi: [i64; 3] = std::array::from_fn(|d| a[d].max(b[d]));
    let Some(axis) = (0..3).find(|&d| lo[d] == hi[d]) else {
        return Err(ApiError::bad(format!(
            "box corners {a:?} and {b:?} span a 3D box; draw the box on one slice"
        )));
    };
    let (plane, bbox) = lock(&sess).volume()?.plane_box(axis, lo, hi)?;
    let prompt = Prompt {
        bbox: Some(bbox),
        points: Vec::new(),
    };
    segment_and_answer(st, sess, deadline, move |_| Ok((plane, prompt, !pos))).await
}

/// Marks the session active, makes the prompt (plane, prompt, subtract) from it, segments it
/// ([`segment_prompt`]) and answers with the whole mask.
async fn segment_and_answer(
    st: Arc<AppState>,
    sess: Arc<Mutex<Session>>,
    deadline: Deadline,
    make: impl FnOnce(&Session) -> Result<(Plane, Prompt, bool), ApiError> + Send + 'static,
) -> Result<Response, ApiError> {
    blocking(move || {
        let (plane, prompt, subtract) = {
            let mut s = lock(&sess);
            s.touch();
            make(&s)?
        };
        segment_prompt(&st, &sess, plane, OBJECT, prompt, subtract, deadline)?;
        mask_response(&lock(&sess))
    })
    .await
}

pub async fn add_point(
    st: Arc<AppState>,
    deadline: Deadline,
    body: Bytes,
) -> Result<Response, ApiError> {
    let sess = slicer_session(&st)?;
    let p = body_json(&body)?;
    let (c, pos) = (ints(&p, "voxel_coord")?, positive(&p)?);
    segment_and_answer(st, sess, deadline, move |s| {
        let (plane, prompt) = s.point_prompt(c, pos, OBJECT)?;
        Ok((plane, prompt, false))
    })
    .await
}
