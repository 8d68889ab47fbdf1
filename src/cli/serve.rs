//! `medsam serve`: loads the model once and serves the web page, the nnInteractive v2 protocol
//! and the SlicerNNInteractive endpoints until SIGTERM or Ctrl-C. Prints the address it listens
//! on (stdout) and one line per request (stderr).

use super::common::{load_any_model, AnyModelArgs};
use super::infer::is_volume_path;
use medsam::io::volume::{read_nifti_volume, read_npz_volume};
use medsam::pipeline::infer::lite::lite_image;
use medsam::pipeline::infer::sam::read_input_image;
use medsam::serve::engine::Engine;
use medsam::serve::session::Volume;
use medsam::serve::{AppState, ServeOptions};
use medsam::{Error, Result};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: AnyModelArgs,
    /// Address to bind; anything but a loopback address requires an API key.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port (0 picks a free one; the chosen address is printed).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Bearer key clients must send (`Authorization: Bearer KEY`).
    #[arg(long, conflicts_with = "api_key_file")]
    pub api_key: Option<String>,
    /// File holding the API key (first line), so it stays out of the process list.
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
    /// Sessions open at once.
    #[arg(long, default_value_t = 16)]
    pub max_sessions: usize,
    /// Seconds a request may take before it is answered with 503.
    #[arg(long, default_value_t = 300)]
    pub request_timeout: u64,
    /// Seconds without activity before a session is dropped.
    #[arg(long, default_value_t = 600)]
    pub idle_timeout: u64,
    /// Largest request body, MiB.
    #[arg(long, default_value_t = 1024)]
    pub max_body_mib: usize,
}

fn api_key(a: &ServeArgs) -> Result<Option<String>> {
    let key = match (&a.api_key, &a.api_key_file) {
        (Some(k), _) => Some(k.trim().to_string()),
        (None, Some(f)) => {
            let s = std::fs::read_to_string(f).map_err(|e| Error::io(f, e))?;
            Some(s.lines().next().unwrap_or("").trim().to_string())
        }
        (None, None) => None,
    };
    if key.as_deref() == Some("") {
        return Err(Error::arg("--api-key", "the API key is empty"));
    }
    if key.is_none() && !a.host.is_loopback() {
        return Err(Error::arg(
            "--host",
            format!(
                "{} is not a loopback address: give --api-key or --api-key-file so strangers cannot use the server",
                a.host
            ),
        ));
    }
    Ok(key)
}

/// Uploaded files → volumes, through the same readers as `medsam infer` (they take paths, so the
/// bytes go to a private temporary file first).
fn decode_upload(name: &str, bytes: &[u8]) -> Result<Volume> {
    static N: AtomicUsize = AtomicUsize::new(0);
    let base = std::path::Path::new(name)
        .file_name()
        .map(|s| {
            s.to_string_lossy()
                .replace(|c: char| !c.is_ascii_alphanumeric() && c != '.', "_")
        })
        .unwrap_or_else(|| "upload".into());
    let dir = std::env::temp_dir().join(format!(
        "medsam-serve-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let path = dir.join(&base);
    let result = std::fs::write(&path, bytes)
        .map_err(|e| Error::io(&path, e))
        .and_then(|_| read_upload(&path));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn read_upload(path: &std::path::Path) -> Result<Volume> {
    if is_volume_path(path) {
        let is_npz = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("npz"));
        let v = if is_npz {
            read_npz_volume(path)?
        } else {
            read_nifti_volume(path)?
        };
        let (d, h, w) = v.shape;
        return Ok(Volume {
            shape: [d, h, w],
            channels: 1,
            data: v.data,
            spacing: v.spacing,
        });
    }
    let img = read_input_image(path)?;
    let u8img = lite_image(path, &img)?;
    let (channels, data) = if u8img.channels == 3 {
        (3, u8img.data)
    } else {
        (1, u8img.data)
    };
    Ok(Volume {
        shape: [1, u8img.h, u8img.w],
        channels,
        data,
        spacing: [1.0; 3],
    })
}

/// Resolves on Ctrl-C or (Unix) SIGTERM.
async fn shutdown_signal() {
    let stop = Arc::new(tokio::sync::Notify::new());
    let n = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            n.notify_one();
        }
    });
    #[cfg(unix)]
    {
        let n = stop.clone();
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::spawn(async move {
                s.recv().await;
                n.notify_one();
            });
        }
    }
    stop.notified().await;
}

pub fn run(a: &ServeArgs) -> Result<()> {
    let key = api_key(a)?;
    let engine = Engine::from_any(load_any_model(&a.model)?);
    let mut opts = ServeOptions::new(Arc::new(decode_upload));
    opts.api_key = key;
    opts.max_sessions = a.max_sessions.max(1);
    opts.request_timeout = Duration::from_secs(a.request_timeout.max(1));
    opts.idle_timeout = Duration::from_secs(a.idle_timeout.max(1));
    opts.max_body_bytes = a.max_body_mib.max(1) << 20;
    opts.on_request = Arc::new(|r| {
        eprintln!("{} {} {} {:.1} ms", r.method, r.path, r.status, r.millis);
    });
    let model = engine.name();
    let state = AppState::new(engine, opts);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Other(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(async move {
        let addr = SocketAddr::new(a.host, a.port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Other(format!("cannot listen on {addr}: {e}")))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::Other(e.to_string()))?;
        println!("medsam serve: {model} on http://{local}/");
        let _ = std::io::stdout().flush();
        medsam::serve::serve(listener, state, shutdown_signal())
            .await
            .map_err(|e| Error::Other(format!("server on {local}: {e}")))?;
        println!("medsam serve: stopped");
        Ok(())
    })
}
