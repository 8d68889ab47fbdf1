//! `medsam serve`: one process holding one model, answering segmentation requests over HTTP.
//!
//! Protocols (each in its own file): the nnInteractive v2 protocol that `nninteractive-client`
//! speaks ([`nninteractive`]), the SlicerNNInteractive extension's endpoints ([`slicer`]), and
//! the web page at `/` with its JSON/binary API ([`web`]). They share the session registry:
//! sessions are keyed by an unguessable token, expire when idle, and each caches the embeddings
//! of the slices it has prompted on.
//!
//! Models: a slice model (MedSAM, LiteMedSAM) answers a prompt on one slice with that slice's
//! mask; MedSAM2 answers it with the whole volume's, tracking the object from the prompted slice
//! through every slice of that axis ([`segment_prompt`]). Volumes are made uint8 as `medsam
//! infer` makes that model's NIfTI input ([`engine::Engine::volume_u8`]).
//!
//! Limits: request bodies are capped, decoded arrays are capped before allocation, each request
//! has a deadline, and the model runs one request at a time (`compute`). A MedSAM2 propagation
//! with real weights takes seconds per slice on a CPU: a large volume needs a longer
//! `--request-timeout` (and client read timeout) than the defaults; a result that arrives after
//! the deadline (the request was already answered with 503), or after the session changed (a new
//! image, a reset, an undo), is dropped, not written. Leases expire on time: idle sessions after
//! `idle_timeout`, and leases of heartbeating clients after `liveness_timeout` of silence.
//! Errors are JSON `{"detail": "..."}` with a 4xx/5xx status (FastAPI's shape, which the Python
//! clients read). The library never prints: every finished request is reported to
//! [`ServeOptions::on_request`].

pub mod blosc2;
pub mod engine;
pub mod nnia;
pub mod nninteractive;
pub mod session;
pub mod slicer;
pub mod web;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use engine::{Engine, Prompt};
use session::{Plane, Session};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Turns an uploaded file (name, bytes) into a volume.
pub type Decoder = Arc<dyn Fn(&str, &[u8]) -> crate::Result<session::Volume> + Send + Sync>;

/// What the binary decides; the defaults suit one workstation.
#[derive(Clone)]
pub struct ServeOptions {
    /// Bearer key required on every endpoint but `/healthz` and the page's static files.
    pub api_key: Option<String>,
    /// Largest request body accepted (bytes).
    pub max_body_bytes: usize,
    /// Largest decoded image (bytes, all voxels at their wire type).
    pub max_image_bytes: usize,
    pub request_timeout: Duration,
    pub max_sessions: usize,
    /// A session without a real action (heartbeats do not count) for this long expires.
    pub idle_timeout: Duration,
    /// A lease claimed through `/claim` (a client that sends heartbeats) expires after this long
    /// without any request, heartbeats included. Web and Slicer sessions send no heartbeats and
    /// only expire when idle.
    pub liveness_timeout: Duration,
    /// Slice embeddings kept per session.
    pub cache_slices: usize,
    /// Called once per finished request (the binary logs it).
    pub on_request: Arc<dyn Fn(&RequestLog) + Send + Sync>,
    /// Turns an uploaded file (name, bytes) into a volume, for the web page and Slicer uploads.
    pub decoder: Decoder,
}

impl ServeOptions {
    pub fn new(decoder: Decoder) -> ServeOptions {
        ServeOptions {
            api_key: None,
            max_body_bytes: 1 << 30,
            max_image_bytes: 2 << 30,
            request_timeout: Duration::from_secs(300),
            max_sessions: 16,
            idle_timeout: Duration::from_secs(600),
            liveness_timeout: Duration::from_secs(60),
            cache_slices: 8,
            on_request: Arc::new(|_| {}),
            decoder,
        }
    }
}

/// One finished request, for the log.
#[derive(Debug, Clone)]
pub struct RequestLog {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub millis: f64,
}

/// Shared server state.
pub struct AppState {
    pub engine: Engine,
    pub opts: ServeOptions,
    pub sessions: Mutex<HashMap<String, Arc<Mutex<Session>>>>,
    /// One model run at a time: the kernels already use every core.
    pub compute: Mutex<()>,
    /// The SlicerNNInteractive protocol has no session token: its one implicit session.
    pub slicer_session: Mutex<Option<String>>,
}

impl AppState {
    pub fn new(engine: Engine, opts: ServeOptions) -> Arc<AppState> {
        Arc::new(AppState {
            engine,
            opts,
            sessions: Mutex::new(HashMap::new()),
            compute: Mutex::new(()),
            slicer_session: Mutex::new(None),
        })
    }

    /// A new session's token, or 503 when at capacity (after dropping expired sessions).
    /// `heartbeats`: the client proves liveness with heartbeats (`/claim`), so its session also
    /// expires after [`ServeOptions::liveness_timeout`] of silence.
    pub fn claim(&self, heartbeats: bool) -> Result<String, ApiError> {
        let mut s = lock(&self.sessions);
        if s.len() >= self.opts.max_sessions {
            self.drop_expired(&mut s);
        }
        if s.len() >= self.opts.max_sessions {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "server is at capacity ({} sessions)",
                    self.opts.max_sessions
                ),
            ));
        }
        let token = new_token();
        let mut session = Session::new(self.opts.cache_slices);
        session.heartbeats = heartbeats;
        s.insert(token.clone(), Arc::new(Mutex::new(session)));
        Ok(token)
    }

    /// The session of a token (marked seen), or 410 Gone when unknown or expired (a lease
    /// expires on time even before the periodic sweep drops it).
    pub fn session(&self, token: Option<&str>) -> Result<Arc<Mutex<Session>>, ApiError> {
        let token = token.ok_or_else(|| ApiError::gone("lease token missing"))?;
        let mut map = lock(&self.sessions);
        let s = map
            .get(token)
            .cloned()
            .ok_or_else(|| ApiError::gone("lease expired or unknown"))?;
        // A busy session (a model run in progress) is plainly alive: don't wait for it.
        if let Ok(mut g) = s.try_lock() {
            if self.expired(&g) {
                drop(g);
                map.remove(token);
                return Err(ApiError::gone("lease expired"));
            }
            g.last_seen = Instant::now();
        }
        Ok(s)
    }

    pub fn release(&self, token: &str) -> bool {
        lock(&self.sessions).remove(token).is_some()
    }

    /// Whether a session has expired: idle too long, or (a heartbeating client) silent too
    /// long. A session with a model job running is alive.
    fn expired(&self, s: &Session) -> bool {
        s.jobs == 0
            && (s.last_active.elapsed() > self.opts.idle_timeout
                || (s.heartbeats && s.last_seen.elapsed() > self.opts.liveness_timeout))
    }

    /// Removes the expired sessions of `map` (busy ones, locked by a request, are alive).
    fn drop_expired(&self, map: &mut HashMap<String, Arc<Mutex<Session>>>) {
        map.retain(|_, sess| match sess.try_lock() {
            Ok(x) => !self.expired(&x),
            Err(_) => true,
        });
    }

    /// Drops sessions idle or silent for too long; returns how many.
    pub fn sweep(&self) -> usize {
        let mut s = lock(&self.sessions);
        let before = s.len();
        self.drop_expired(&mut s);
        before - s.len()
    }
}

/// Takes a model job off its session's [`Session::jobs`] when dropped (the count is raised under
/// the same lock as the job's input is taken).
struct JobGuard<'a>(&'a Mutex<Session>);

impl Drop for JobGuard<'_> {
    fn drop(&mut self) {
        let mut s = lock(self.0);
        s.jobs = s.jobs.saturating_sub(1);
    }
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// 128 random bits as hex, from the OS (falling back to std's randomly keyed hasher).
fn new_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::io::Read;
    let mut b = [0u8; 16];
    let from_os = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok();
    if !from_os {
        for half in b.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(Instant::now().elapsed().as_nanos());
            half.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An error answered as `{"detail": ...}` with a status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: String,
}

impl ApiError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            detail: detail.into(),
        }
    }
    pub fn bad(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, detail)
    }
    pub fn gone(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::GONE, detail)
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> ApiError {
        ApiError::bad(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "detail": self.detail });
        (self.status, axum::Json(body)).into_response()
    }
}

/// Runs blocking model work off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("worker failed: {e}"),
        )
    })?
}

/// Constant-time equality (time depends on the lengths only).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().max(b.len());
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= (x ^ y) as u64;
    }
    std::hint::black_box(diff) == 0
}

fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(key) = &state.opts.api_key else {
        return true;
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    ct_eq(given.as_bytes(), key.as_bytes())
}

/// The instant at which the guard answers a request with 503 (a request extension).
#[derive(Clone, Copy, Debug)]
pub struct Deadline(pub Instant);

impl Deadline {
    /// Whether work finishing now can still be answered: before the deadline with a margin for
    /// the answer itself (a tenth of the timeout, at most a second).
    fn open(self, timeout: Duration) -> bool {
        let margin = (timeout / 10).min(Duration::from_secs(1));
        Instant::now() + margin < self.0
    }
}

/// Runs `prompt` on `plane` as `label` and writes the result into the session's labels (one
/// undo step); `subtract` clears the result's voxels of `label` instead. Returns the changed
/// region, or `None` when nothing changed. To be called off the async threads ([`blocking`]).
///
/// - A slice model segments the plane ([`Session::segment_plane`]).
/// - A volume model (MedSAM2) runs `medsam infer --model-type medsam2`'s 3D recipe with the plane
///   as key slice through every slice along the plane's axis ([`Engine::propagate`]); the mask
///   replaces (or, subtracting, clears) `label` in the whole volume, as the slice model's does on
///   its plane. The session is not locked meanwhile (heartbeats keep answering; it counts as a
///   running job in [`Session::jobs`], so it does not expire); the result is dropped (503) when
///   the `deadline` has passed, or (409) when the session changed meanwhile
///   ([`Session::generation`]: a new image, a reset, an undo, an initial segmentation).
pub fn segment_prompt(
    st: &AppState,
    sess: &Mutex<Session>,
    plane: Plane,
    label: u8,
    prompt: Prompt,
    subtract: bool,
    deadline: Deadline,
) -> Result<Option<[[usize; 2]; 3]>, ApiError> {
    if !st.engine.propagates() {
        let mut s = lock(sess);
        return Ok(s.segment_plane(&st.engine, &st.compute, plane, label, prompt, subtract)?);
    }
    let (stack, _job) = {
        let mut s = lock(sess);
        let stack = s.stack_along(plane.0)?;
        s.jobs += 1;
        (stack, JobGuard(sess))
    };
    let mask = {
        let _g = lock(&st.compute);
        st.engine.propagate(
            &stack.voxels,
            stack.dims,
            plane.1,
            &prompt,
            &mut |_, _, _| {},
        )?
    };
    if !deadline.open(st.opts.request_timeout) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the segmentation took longer than the request timeout ({} s) and was dropped; restart the server with a longer --request-timeout",
                st.opts.request_timeout.as_secs_f64()
            ),
        ));
    }
    let mut s = lock(sess);
    if s.generation != stack.generation {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the session changed (new image, reset, undo or initial segmentation) while this prompt was being segmented; its result was dropped",
        ));
    }
    Ok(s.apply_propagation(plane, label, prompt, &mask, subtract)?)
}

/// Bearer key check (except health and the page's static files), deadline, and the log line.
async fn guard(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let t0 = Instant::now();
    req.extensions_mut()
        .insert(Deadline(t0 + state.opts.request_timeout));
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let public = path == "/healthz" || path == "/" || path.starts_with("/static/");
    let resp = if !public && !authorized(&state, req.headers()) {
        ApiError::new(StatusCode::UNAUTHORIZED, "missing or invalid bearer token").into_response()
    } else {
        match tokio::time::timeout(state.opts.request_timeout, next.run(req)).await {
            Ok(r) => r,
            Err(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "request took longer than {} s",
                    state.opts.request_timeout.as_secs_f64()
                ),
            )
            .into_response(),
        }
    };
    (state.opts.on_request)(&RequestLog {
        method,
        path,
        status: resp.status().as_u16(),
        millis: t0.elapsed().as_secs_f64() * 1e3,
    });
    resp
}

/// Every route of every protocol.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .merge(nninteractive::routes())
        .merge(slicer::routes())
        .merge(web::routes())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .layer(DefaultBodyLimit::max(state.opts.max_body_bytes))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then finishes the requests in flight. Expired sessions
/// are swept every few seconds.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let sweeper = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                state.sweep();
            }
        })
    };
    let r = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await;
    sweeper.abort();
    r
}
