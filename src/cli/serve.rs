//! `medsam serve`: loads the model once and serves the web page, the nnInteractive v2 protocol
//! and the SlicerNNInteractive endpoints until SIGTERM or Ctrl-C. Prints the address it listens
//! on (stdout) and one line per request (stderr).

use super::common::{load_any_model, parse_device, AnyModelArgs, AnyModelType};
use super::infer::is_volume_path;
use medsam::io::dicom::read_series;
use medsam::io::nifti::{read_nifti, read_nifti_geometry, NiftiGeometry, NiftiVolume};
use medsam::io::volume::{
    is_nifti_path, read_challenge_npz, read_nifti_volume, u8_volume, ChallengeNpz,
};
use medsam::models::sam2::{load_sam2, VideoPredictor};
use medsam::pipeline::infer::lite::lite_image;
use medsam::pipeline::infer::sam::{read_input_image, InferPrecision};
use medsam::serve::engine::{medsam2_u8, Engine};
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
    /// Seconds without activity (heartbeats do not count) before a session is dropped.
    #[arg(long, default_value_t = 600)]
    pub idle_timeout: u64,
    /// Seconds a nnInteractive client's lease survives without any request, heartbeats
    /// included (`nninteractive-client` beats every max(5 s, half of this)). Web and Slicer
    /// sessions send no heartbeats and only expire when idle.
    #[arg(long, default_value_t = 60)]
    pub liveness_timeout: u64,
    /// Image-encoder precision, as `medsam infer --precision` (MedSAM2's memory attention in
    /// bf16 under bf16 and int8; prompt encoders, mask decoders, memory encoder: f32).
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: InferPrecision,
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
/// bytes go to a private temporary file first). A `.zip` holds a DICOM series (read as
/// `medsam infer -i DIR` reads a folder). `medsam2`: intensities as `medsam infer --model-type
/// medsam2` converts them (uint8 values kept, others clipped to percentiles).
fn decode_upload(name: &str, bytes: &[u8], medsam2: bool) -> Result<Volume> {
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
        .and_then(|_| read_upload(&path, medsam2));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A grey volume from raw voxels, converted as the model's `medsam infer` path converts them.
fn grey_volume(path: &std::path::Path, v: &NiftiVolume, medsam2: bool) -> Result<Volume> {
    medsam::io::volume::check_finite(path, v)?;
    let data = if medsam2 {
        medsam2_u8(&v.data)?
    } else {
        u8_volume(path, v).data
    };
    Ok(Volume {
        shape: v.shape,
        channels: 1,
        data,
        spacing: v.spacing,
        geometry: None,
    })
}

/// Unpacks a zipped DICOM series into `dir/series` (names flattened, sizes capped by the body
/// limit already) and reads it.
fn read_dicom_zip(path: &std::path::Path, medsam2: bool) -> Result<Volume> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut z = zip::ZipArchive::new(f)
        .map_err(|e| Error::file(path, format!("not a readable zip archive: {e}")))?;
    let out = path.with_file_name("series");
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    for i in 0..z.len() {
        let mut m = z
            .by_index(i)
            .map_err(|e| Error::file(path, format!("zip member {i}: {e}")))?;
        if !m.is_file() {
            continue;
        }
        let dst = out.join(format!("{i:06}.dcm"));
        let mut w = std::fs::File::create(&dst).map_err(|e| Error::io(&dst, e))?;
        std::io::copy(&mut m, &mut w).map_err(|e| Error::io(&dst, e))?;
    }
    let s = read_series(&out, None).map_err(|e| Error::Other(e.to_string()))?;
    let mut v = grey_volume(path, &s.volume, medsam2)?;
    // The geometry `medsam infer -i DIR` gives its NIfTI mask.
    let g = &s.geometry;
    v.geometry = Some(NiftiGeometry::from_affine(g.spacing, Some(g.ras_affine())));
    Ok(v)
}

fn read_upload(path: &std::path::Path, medsam2: bool) -> Result<Volume> {
    let ext = |e: &str| path.extension().is_some_and(|x| x.eq_ignore_ascii_case(e));
    if ext("zip") {
        return read_dicom_zip(path, medsam2);
    }
    if is_volume_path(path) {
        let mut vol = if medsam2 && !ext("npz") {
            let v = read_nifti(path).map_err(|e| Error::Other(e.to_string()))?;
            grey_volume(path, &v, true)?
        } else {
            let v = if ext("npz") {
                match read_challenge_npz(path, None)? {
                    ChallengeNpz::Volume3d(v) => v,
                    // A 2-D challenge `.npz` ((H, W, 3) or (H, W)) is one slice, as an image.
                    ChallengeNpz::Image2d(img) => {
                        return Ok(Volume {
                            shape: [1, img.h, img.w],
                            channels: img.channels,
                            data: img.data,
                            spacing: [1.0; 3],
                            geometry: None,
                        })
                    }
                }
            } else {
                read_nifti_volume(path)?
            };
            let (d, h, w) = v.shape;
            Volume {
                shape: [d, h, w],
                channels: 1,
                data: v.data,
                spacing: v.spacing,
                geometry: None,
            }
        };
        // A NIfTI input's header geometry, which `medsam infer` gives its NIfTI mask.
        if is_nifti_path(path) {
            let g = read_nifti_geometry(path).map_err(|e| Error::Other(e.to_string()))?;
            vol.geometry = Some(g);
        }
        return Ok(vol);
    }
    let img = read_input_image(path)?;
    let u8img = lite_image(path, &img)?;
    Ok(Volume {
        shape: [1, u8img.h, u8img.w],
        channels: u8img.channels,
        data: u8img.data,
        spacing: [1.0; 3],
        geometry: None,
    })
}

/// Loads the model: MedSAM2 through its own loader (as `medsam infer --model-type medsam2`,
/// holes filled up to 8 pixels), the others through `load_any_model`.
fn load_engine(a: &AnyModelArgs, precision: InferPrecision) -> Result<Engine> {
    if a.model_type != Some(AnyModelType::Medsam2) {
        return Ok(Engine::from_any(load_any_model(a)?, precision));
    }
    let (model, _report) = load_sam2(
        &a.checkpoint,
        a.model_config.as_deref(),
        None,
        parse_device(&a.device)?,
    )?;
    let mut p = VideoPredictor::new(model);
    p.fill_hole_area = 8;
    p.precision = precision;
    Ok(Engine::Medsam2(Box::new(p)))
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
    let engine = load_engine(&a.model, a.precision)?;
    super::infer::note_precision(a.precision);
    let medsam2 = engine.propagates();
    let mut opts = ServeOptions::new(Arc::new(move |name: &str, bytes: &[u8]| {
        decode_upload(name, bytes, medsam2)
    }));
    opts.api_key = key;
    opts.max_sessions = a.max_sessions.max(1);
    opts.request_timeout = Duration::from_secs(a.request_timeout.max(1));
    opts.idle_timeout = Duration::from_secs(a.idle_timeout.max(1));
    opts.liveness_timeout = Duration::from_secs(a.liveness_timeout.max(1));
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
