//! `medsam serve` end to end, with the tiny LiteMedSAM checkpoint (no downloads):
//!
//! - the real `nninteractive-client` (Python, `MEDSAM_PYTHON`) sets a volume, a target buffer and
//!   a 2D box; the mask must equal `medsam infer` on that slice (saved as PNG) and box;
//! - with a tiny MedSAM2 (`--model-type medsam2`) the same client's box and click on one slice,
//!   and the Slicer extension's box, segment the whole volume exactly as
//!   `medsam infer --model-type medsam2 --box3d` with that slice as z range (a float volume, so
//!   the intensity conversion is checked too);
//! - blosc2 chunks made by the real `blosc2` package (codecs, filters, types, odd sizes) decode
//!   to the same bytes;
//! - malformed requests get 4xx JSON errors, the API key is enforced, SIGTERM stops the server;
//! - the v2 protocol request by request (errors, `/predict`, reset, initial segmentation, undo,
//!   release), MedSAM2 boxes on axes 1 and 2 against `medsam infer` on the re-stacked volume;
//! - leases expire on time, slow requests get 503, Ctrl-C answers the request in flight, one log
//!   line per request, the NIfTI download keeps the input's geometry, embeddings are cached;
//! - in-process servers whose model lock the test holds, to order events exactly: a MedSAM2
//!   result arriving after a reset/undo/new image/initial segmentation or after the request's
//!   deadline is dropped, not written.
//!
//! Tests whose Python packages are missing print "SKIPPED: ..." and return.

#[path = "common/lite_fixture.rs"]
mod lite_fixture;

use lite_fixture::{tiny_checkpoint, tiny_config};
use medsam::io::checkpoint::{save_pth, Value};
use medsam::Device;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("medsam-serve-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn python() -> String {
    std::env::var("MEDSAM_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Whether `python -c "import <module>"` works.
fn has_python_module(module: &str) -> bool {
    Command::new(python())
        .args(["-c", &format!("import {module}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A running `medsam serve`; killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(ckpt: &Path, extra: &[&str]) -> Server {
    start_with(ckpt, &tiny_config(), extra)
}

fn start_with(ckpt: &Path, config: &Path, extra: &[&str]) -> Server {
    spawn_server(ckpt, config, extra, Stdio::null())
}

/// `medsam serve` with `config`, its log (stderr) going to `stderr`.
fn spawn_server(ckpt: &Path, config: &Path, extra: &[&str], stderr: Stdio) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_medsam"))
        .arg("serve")
        .arg("-c")
        .arg(ckpt)
        .arg("--model-config")
        .arg(config)
        .args(["--port", "0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .trim()
        .trim_end_matches('/')
        .to_string();
    Server { child, addr }
}

/// One HTTP/1.1 request (Connection: close); returns status, headers (lower-case) and body.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    // The server may answer (413) before reading a large body; a reset then is fine.
    let _ = s.write_all(body);
    read_response(&mut s)
}

/// Reads one HTTP response from `s`: status, headers (lower-case) and body.
fn read_response(s: &mut TcpStream) -> (u16, Vec<(String, String)>, Vec<u8>) {
    // Read the head, then exactly Content-Length bytes (some servers keep the connection open
    // despite `Connection: close`), or to the end of a chunked body / the stream.
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    let mut want: Option<usize> = None;
    loop {
        if let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            if want.is_none() {
                let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                want = Some(len.map_or(usize::MAX, |n| split + 4 + n));
            }
            let done = want.is_some_and(|n| raw.len() >= n)
                || (want == Some(usize::MAX) && raw.ends_with(b"0\r\n\r\n"));
            if done {
                break;
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let hs: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if hs
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v == "chunked")
    {
        body = dechunk(&body);
    }
    (status, hs, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(nl) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + n]);
        b = &b[nl + 2 + n + 2..];
    }
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// A `d × h × w` volume: a bright ellipse that drifts across slices, on a gradient.
fn volume(d: usize, h: usize, w: usize) -> Vec<u8> {
    let mut v = vec![0u8; d * h * w];
    for z in 0..d {
        for y in 0..h {
            for x in 0..w {
                let (dy, dx) = (
                    (y as f64 - h as f64 * (0.4 + 0.03 * z as f64)) / (h as f64 * 0.25),
                    (x as f64 - w as f64 * 0.55) / (w as f64 * 0.2),
                );
                let base = (20.0 + 60.0 * x as f64 / w as f64) as u8;
                v[(z * h + y) * w + x] = if dx * dx + dy * dy < 1.0 { 220 } else { base };
            }
        }
    }
    v
}

/// Saves the one-slice phantom [`volume`]`(1, h, w)` as a grey image (format from the extension).
fn save_phantom(path: &Path, h: usize, w: usize) {
    image::GrayImage::from_raw(w as u32, h as u32, volume(1, h, w))
        .unwrap()
        .save(path)
        .unwrap();
}

fn read_png_mask(path: &Path) -> Vec<bool> {
    let img = image::open(path).unwrap().to_luma8();
    img.into_raw().iter().map(|&v| v > 0).collect()
}

/// Whether `MEDSAM_PYTHON` imports every module; says SKIPPED (naming `what`) when not.
fn python_has(modules: &[&str], what: &str) -> bool {
    let ok = modules.iter().all(|m| has_python_module(m));
    if !ok {
        eprintln!(
            "SKIPPED: {what} is not importable by {} (set MEDSAM_PYTHON)",
            python()
        );
    }
    ok
}

/// A protocol test's directory, tiny checkpoint, `d × h × w` volume and that volume as `.npy`.
fn protocol_case(
    name: &str,
    (d, h, w): (usize, usize, usize),
) -> (PathBuf, PathBuf, Vec<u8>, PathBuf) {
    let dir = tmpdir(name);
    let ckpt = tiny_checkpoint(&dir);
    let vol = volume(d, h, w);
    let vol_path = dir.join("vol.npy");
    medsam::io::npy::write_npy_u8(&vol_path, &[d, h, w], &vol).unwrap();
    (dir, ckpt, vol, vol_path)
}

/// `medsam infer` on slice `z` of a `d × h × w` volume, saved as `dir/slice.png`, with one box.
fn infer_slice(
    ckpt: &Path,
    vol: &[u8],
    (h, w): (usize, usize),
    z: usize,
    b: [usize; 4],
    dir: &Path,
) -> Vec<bool> {
    let png = dir.join("slice.png");
    image::GrayImage::from_raw(w as u32, h as u32, vol[z * h * w..(z + 1) * h * w].to_vec())
        .unwrap()
        .save(&png)
        .unwrap();
    infer_png(ckpt, &png, b, &dir.join("infer"))
}

/// `medsam infer` on a PNG with one box; returns the mask.
fn infer_png(ckpt: &Path, png: &Path, b: [usize; 4], out: &Path) -> Vec<bool> {
    let o = Command::new(env!("CARGO_BIN_EXE_medsam"))
        .arg("infer")
        .arg("-i")
        .arg(png)
        .arg("-o")
        .arg(out)
        .arg("-c")
        .arg(ckpt)
        .arg("--model-config")
        .arg(tiny_config())
        .arg("--box")
        .arg(format!("[{},{},{},{}]", b[0], b[1], b[2], b[3]))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stem = png.file_stem().unwrap().to_string_lossy();
    read_png_mask(&out.join(format!("seg_{stem}.png")))
}

/// Runs the client script `tests/serve/SCRIPT` against the server at `addr` with the volume, the
/// box `[z, y0, y1, x0, x1]`, the output directory and `extra` arguments; returns its JSON summary.
fn run_client(
    script: &str,
    addr: &str,
    vol_path: &Path,
    zbox: [usize; 5],
    dir: &Path,
    extra: &[&str],
) -> serde_json::Value {
    let o = Command::new(python())
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/serve")
                .join(script),
        )
        .arg(format!("http://{addr}"))
        .arg(vol_path)
        .args(zbox.map(|v| v.to_string()))
        .arg(dir)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let summary = json(&o.stdout);
    eprintln!("{script}: {summary}");
    summary
}

#[test]
fn nninteractive_client_box_matches_medsam_infer() {
    if !python_has(&["nnInteractive.inference.remote"], "nninteractive-client") {
        return;
    }
    let (d, h, w) = (5, 48, 40);
    let (dir, ckpt, vol, vol_path) = protocol_case("nnia", (d, h, w));
    let (z, y0, y1, x0, x1) = (2usize, 8usize, 36usize, 10usize, 34usize);
    let key = "test-key-123";
    let srv = start(&ckpt, &["--api-key", key]);
    let summary = run_client(
        "nninteractive_client.py",
        &srv.addr,
        &vol_path,
        [z, y0, y1, x0, x1],
        &dir,
        &[key],
    );
    assert_eq!(summary["supported_interactions"]["bbox2d"], true);
    assert_eq!(summary["supported_interactions"]["lasso"], false);
    assert_eq!(
        summary["original_image_shape"],
        serde_json::json!([1, d, h, w])
    );
    assert_eq!(summary["undo"], true);
    assert_eq!(summary["after_undo_voxels"], 0);
    assert_eq!(summary["float32_int16_same"], true);
    assert_eq!(summary["lasso"], 400);
    assert_eq!(summary["heartbeat"], true);

    // The buffer after the box equals `medsam infer` on the slice and the same box.
    let buf = medsam::io::npy::read_npy(dir.join("after_box.npy")).unwrap();
    assert_eq!(buf.shape, vec![d, h, w]);
    let buf = buf.to_u8().unwrap();
    let want = infer_slice(&ckpt, &vol, (h, w), z, [x0, y0, x1, y1], &dir);
    let got: Vec<bool> = buf[z * h * w..(z + 1) * h * w]
        .iter()
        .map(|&v| v > 0)
        .collect();
    assert_eq!(got, want, "server mask differs from medsam infer");
    let others = buf
        .iter()
        .enumerate()
        .filter(|(i, &v)| v > 0 && i / (h * w) != z)
        .count();
    assert_eq!(others, 0, "voxels set outside the boxed slice");
    eprintln!(
        "mask: {} of {} pixels on slice {z} (tiny model)",
        got.iter().filter(|&&m| m).count(),
        h * w
    );
}

#[test]
fn slicer_extension_requests_match_medsam_infer() {
    if !python_has(&["httpx", "numpy"], "httpx/numpy") {
        return;
    }
    let (d, h, w) = (4, 40, 44);
    let (dir, ckpt, vol, vol_path) = protocol_case("slicer", (d, h, w));
    let (z, y0, y1, x0, x1) = (1usize, 6usize, 30usize, 12usize, 40usize);
    let srv = start(&ckpt, &[]);
    let summary = run_client(
        "slicer_replay.py",
        &srv.addr,
        &vol_path,
        [z, y0, y1, x0, x1],
        &dir,
        &[],
    );
    assert_eq!(summary["upload_image"][0], 200);
    assert_eq!(summary["bbox_status"], 200);
    assert_eq!(summary["content_encoding"], "gzip");
    assert_eq!(summary["point_status"], 200);
    assert_eq!(summary["lasso"][0], 400);
    assert_eq!(summary["upload_segment"], 200);
    let mask = medsam::io::npy::read_npy(dir.join("slicer_box.npy"))
        .unwrap()
        .to_u8()
        .unwrap();
    let want = infer_slice(&ckpt, &vol, (h, w), z, [x0, y0, x1, y1], &dir);
    let got: Vec<bool> = mask[z * h * w..(z + 1) * h * w]
        .iter()
        .map(|&v| v > 0)
        .collect();
    assert_eq!(got, want, "Slicer-protocol mask differs from medsam infer");
    assert_eq!(
        mask.iter().filter(|&&v| v > 0).count(),
        got.iter().filter(|&&m| m).count()
    );
}

#[test]
fn blosc2_chunks_from_python_decode() {
    if !python_has(&["blosc2"], "python blosc2") {
        return;
    }
    let dir = tmpdir("blosc2");
    let o = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serve/blosc2_cases.py"))
        .arg(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let names: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert!(names.len() > 10, "too few cases: {names:?}");
    for n in &names {
        let raw = std::fs::read(dir.join(format!("{n}.raw"))).unwrap();
        let c = std::fs::read(dir.join(format!("{n}.b2"))).unwrap();
        let got =
            medsam::serve::blosc2::decompress(&c, 1 << 28).unwrap_or_else(|e| panic!("{n}: {e}"));
        assert!(got == raw, "{n}: decoded bytes differ");
        let nnia = std::fs::read(dir.join(format!("{n}.nnia"))).unwrap();
        let a = medsam::serve::nnia::unpack(&nnia, 1 << 28).unwrap_or_else(|e| panic!("{n}: {e}"));
        assert!(a.data == raw, "{n}: NNIA payload differs");
    }
    // Our encoding decodes with the real package.
    let a = medsam::serve::nnia::Array {
        shape: vec![3, 5, 7],
        dtype: medsam::serve::nnia::DType::I16,
        data: (0..210u32).map(|i| (i * 13 % 256) as u8).collect(),
    };
    let p = dir.join("ours.nnia");
    std::fs::write(&p, medsam::serve::nnia::pack(&a).unwrap()).unwrap();
    let o = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serve/blosc2_cases.py"))
        .arg("--check")
        .arg(&p)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let expect: Vec<i64> = a
        .data
        .chunks(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
        .collect();
    let got: Vec<i64> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(got, expect);
}

#[test]
fn malformed_requests_get_json_errors() {
    let dir = tmpdir("errors");
    let ckpt = tiny_checkpoint(&dir);
    let srv = start(&ckpt, &["--max-body-mib", "1"]);
    let a = srv.addr.as_str();
    let (st, _, b) = http(a, "GET", "/healthz", &[], b"");
    assert_eq!((st, json(&b)["ok"].clone()), (200, serde_json::json!(true)));
    let (st, _, b) = http(a, "GET", "/nope", &[], b"");
    assert_eq!(st, 404);
    assert!(json(&b)["detail"].is_string());
    // No lease / unknown lease → 410.
    let (st, _, b) = http(a, "POST", "/set_image", &[], b"NNIA");
    assert_eq!(st, 410, "{}", String::from_utf8_lossy(&b));
    let (st, _, _) = http(a, "POST", "/undo", &[("X-Lease-Token", "deadbeef")], b"");
    assert_eq!(st, 410);
    let (st, _, b) = http(a, "POST", "/claim", &[], b"");
    assert_eq!(st, 200);
    let token = json(&b)["lease_token"].as_str().unwrap().to_string();
    let lease = [("X-Lease-Token", token.as_str())];
    // Garbage, a bad magic, a truncated chunk, a lying shape.
    for body in [
        &b""[..],
        b"hello",
        b"NNIA\x01\x01\x04\x05uint8",
        b"XXXX\x01\x01\x01\x05uint8\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
    ] {
        let (st, _, b) = http(a, "POST", "/set_image", &lease, body);
        assert_eq!(st, 400, "{}", String::from_utf8_lossy(&b));
        assert!(json(&b)["detail"].is_string());
    }
    let mut huge = b"NNIA\x01\x01\x04\x05uint8".to_vec();
    for d in [1i64, 1 << 20, 1 << 20, 1 << 20] {
        huge.extend_from_slice(&d.to_le_bytes());
    }
    huge.extend_from_slice(&0u32.to_le_bytes());
    let (st, _, b) = http(a, "POST", "/set_image", &lease, &huge);
    assert_eq!(st, 400, "{}", String::from_utf8_lossy(&b));
    // Interactions before an image, then bad JSON, a lasso (more in v2_protocol_edits_and_errors).
    let (st, _, b) = http(
        a,
        "POST",
        "/add_bbox_interaction",
        &lease,
        br#"{"bbox_coords": [[0,1],[0,5],[0,5]], "include_interaction": true}"#,
    );
    assert_eq!(st, 400, "{}", String::from_utf8_lossy(&b));
    assert!(json(&b)["detail"].as_str().unwrap().contains("set_image"));
    let (st, _, _) = http(a, "POST", "/add_bbox_interaction", &lease, b"{not json");
    assert_eq!(st, 400);
    let (st, _, _) = http(a, "POST", "/add_lasso_interaction", &lease, b"");
    assert_eq!(st, 400);
    // Body over the 1 MiB cap → 413.
    let big = vec![0u8; 2 << 20];
    let (st, _, _) = http(a, "POST", "/set_image", &lease, &big);
    assert_eq!(st, 413);
    // The server still answers.
    let (st, _, _) = http(a, "GET", "/healthz", &[], b"");
    assert_eq!(st, 200);
}

#[test]
fn api_key_is_enforced_and_sigterm_stops_the_server() {
    let dir = tmpdir("auth");
    let ckpt = tiny_checkpoint(&dir);
    // No key on a non-loopback address: refused before binding.
    let o = Command::new(env!("CARGO_BIN_EXE_medsam"))
        .arg("serve")
        .arg("-c")
        .arg(&ckpt)
        .arg("--model-config")
        .arg(tiny_config())
        .args(["--host", "0.0.0.0", "--port", "0"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--api-key"));
    let key_file = dir.join("key.txt");
    std::fs::write(&key_file, "s3cret\n").unwrap();
    let mut srv = start(&ckpt, &["--api-key-file", key_file.to_str().unwrap()]);
    let a = srv.addr.clone();
    assert_eq!(http(&a, "POST", "/claim", &[], b"").0, 401);
    assert_eq!(
        http(
            &a,
            "POST",
            "/claim",
            &[("Authorization", "Bearer wrong")],
            b""
        )
        .0,
        401
    );
    assert_eq!(
        http(
            &a,
            "GET",
            "/capabilities",
            &[("Authorization", "Bearer s3cret")],
            b""
        )
        .0,
        200
    );
    assert_eq!(http(&a, "GET", "/healthz", &[], b"").0, 200);
    let st = Command::new("kill")
        .args(["-TERM", &srv.child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = srv.child.wait().unwrap();
    assert!(status.success(), "exit after SIGTERM: {status:?}");
}

// ---- the web page in headless Chromium, driven through chromedriver's WebDriver HTTP API ----

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(cmd))
            .find(|f| f.is_file())
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn b64decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let v: Vec<u32> = s.bytes().filter_map(val).collect();
    let mut out = Vec::new();
    for c in v.chunks(4) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |a, (i, &x)| a | x << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..c.len()]);
    }
    out
}

/// A WebDriver session on a chromedriver child; both closed when dropped.
struct Browser {
    driver: Child,
    addr: String,
    session: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = http_json(
            &self.addr,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        );
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn http_json(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    let b = body.map(|b| b.to_string()).unwrap_or_default();
    let (st, _, out) = http(
        addr,
        method,
        path,
        &[("Content-Type", "application/json")],
        b.as_bytes(),
    );
    let v = json(&out);
    assert!(st < 300, "{method} {path}: {st} {v}");
    v["value"].clone()
}

impl Browser {
    fn cmd(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        http_json(
            &self.addr,
            method,
            &format!("/session/{}{path}", self.session),
            body,
        )
    }

    fn exec(&self, script: &str) -> serde_json::Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(serde_json::json!({"script": script, "args": []})),
        )
    }

    fn wait_for(&self, script: &str, what: &str) -> serde_json::Value {
        for _ in 0..600 {
            let v = self.exec(script);
            if !v.is_null() && v != false {
                return v;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting for {what}");
    }
}

fn start_browser(chromium: &Path, driver: &Path, downloads: &Path, profile: &Path) -> Browser {
    let port = free_port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    for _ in 0..100 {
        if TcpStream::connect(&addr).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let caps = serde_json::json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
        "binary": chromium,
        "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage", "--window-size=900,800",
                 format!("--user-data-dir={}", profile.display())],
        "prefs": {"download.default_directory": downloads, "download.prompt_for_download": false}
    }}}});
    let (st, _, out) = http(
        &addr,
        "POST",
        "/session",
        &[("Content-Type", "application/json")],
        caps.to_string().as_bytes(),
    );
    let v = json(&out);
    assert_eq!(st, 200, "new WebDriver session: {v}");
    let session = v["value"]["sessionId"].as_str().unwrap().to_string();
    Browser {
        driver: child,
        addr,
        session,
    }
}

impl Browser {
    /// Loads the page and opens `file` in it; waits until it is ready.
    fn open(&self, addr: &str, file: &Path) {
        self.open_files(addr, &[file.to_path_buf()]);
    }

    /// Loads the page and picks `files` in its file input; waits until it is ready.
    fn open_files(&self, addr: &str, files: &[PathBuf]) {
        self.cmd(
            "POST",
            "/url",
            Some(serde_json::json!({"url": format!("http://{addr}/")})),
        );
        let input = self.cmd(
            "POST",
            "/element",
            Some(serde_json::json!({"using": "css selector", "value": "#file"})),
        );
        let id = input.as_object().unwrap().values().next().unwrap();
        self.cmd(
            "POST",
            &format!("/element/{}/value", id.as_str().unwrap()),
            Some(serde_json::json!({"text": files
                .iter()
                .map(|f| f.to_str().unwrap())
                .collect::<Vec<_>>()
                .join("\n")})),
        );
        self.wait_for(
            "return document.body.dataset.state === 'ready'",
            "the image to load",
        );
    }

    /// Image pixel `(x, y)` → a pointer move in viewport pixels (canvas pixels are `scale` CSS
    /// pixels wide, so integer image coordinates map exactly; the page rounds).
    fn at(&self, x: usize, y: usize) -> serde_json::Value {
        let r = self.exec(
            "const v = document.getElementById('view'), r = v.getBoundingClientRect(); return [r.left, r.top, r.width / v.width];",
        );
        let f = |i: usize| r[i].as_f64().unwrap();
        serde_json::json!({"type": "pointerMove", "duration": 0, "origin": "viewport",
            "x": (f(0) + x as f64 * f(2)).round() as i64, "y": (f(1) + y as f64 * f(2)).round() as i64})
    }

    fn pointer(&self, actions: Vec<serde_json::Value>) {
        self.cmd(
            "POST",
            "/actions",
            Some(
                serde_json::json!({"actions": [{"type": "pointer", "id": "mouse",
                "parameters": {"pointerType": "mouse"}, "actions": actions}]}),
            ),
        );
    }

    /// Drags a box `[x0, y0, x1, y1]` and waits for the page's `n`-th segmentation.
    fn drag_box(&self, bx: [usize; 4], n: usize) {
        let (down, up) = (
            serde_json::json!({"type": "pointerDown", "button": 0}),
            serde_json::json!({"type": "pointerUp", "button": 0}),
        );
        let mid = self.at((bx[0] + bx[2]) / 2, (bx[1] + bx[3]) / 2);
        self.pointer(vec![
            self.at(bx[0], bx[1]),
            down,
            mid,
            self.at(bx[2], bx[3]),
            up,
        ]);
        self.wait_segments(n);
    }

    /// A click at `(x, y)` in the current mode; waits for the `n`-th segmentation.
    fn click(&self, x: usize, y: usize, n: usize) {
        let (down, up) = (
            serde_json::json!({"type": "pointerDown", "button": 0}),
            serde_json::json!({"type": "pointerUp", "button": 0}),
        );
        self.pointer(vec![self.at(x, y), down, up]);
        self.wait_segments(n);
    }

    fn wait_segments(&self, n: usize) {
        self.wait_for(
            &format!("return document.body.dataset.segments === '{n}' && document.body.dataset.state === 'ready'"),
            "the overlay",
        );
        let err = self.exec("return document.getElementById('status').className");
        let msg = self.exec("return document.getElementById('status').textContent");
        assert_eq!(err, "", "page status: {msg}");
    }

    /// Clicks "download" and waits for `dir/name`.
    fn download(&self, dir: &Path, name: &str) -> PathBuf {
        let _ = std::fs::remove_file(dir.join(name));
        self.exec("document.getElementById('download').click(); return null;");
        let file = dir.join(name);
        for _ in 0..300 {
            if file.is_file() {
                // Chromium renames the finished download into place.
                std::thread::sleep(Duration::from_millis(200));
                return file;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no download at {}", file.display());
    }
}

/// Chromium and chromedriver, or `None` with a SKIPPED line.
fn chromium() -> Option<(PathBuf, PathBuf)> {
    match (
        which("chromium").or_else(|| which("chromium-browser")),
        which("chromedriver"),
    ) {
        (Some(c), Some(d)) => Some((c, d)),
        _ => {
            eprintln!(
                "SKIPPED: chromium and chromedriver are not installed (apt chromium chromium-driver)"
            );
            None
        }
    }
}

/// A Chromium test's directory, tiny checkpoint, server, downloads folder and browser.
fn browser_case(name: &str) -> Option<(PathBuf, PathBuf, Server, PathBuf, Browser)> {
    let (chromium, driver) = chromium()?;
    let dir = tmpdir(name);
    let ckpt = tiny_checkpoint(&dir);
    let srv = start(&ckpt, &[]);
    let downloads = dir.join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let b = start_browser(&chromium, &driver, &downloads, &dir.join("profile"));
    Some((dir, ckpt, srv, downloads, b))
}

#[test]
fn web_page_box_in_headless_chromium_matches_medsam_infer() {
    let Some((dir, ckpt, srv, downloads, b)) = browser_case("web") else {
        return;
    };
    let (h, w) = (48usize, 40usize);
    let img = volume(3, h, w)[h * w..2 * h * w].to_vec();
    let png = dir.join("ct.png");
    image::GrayImage::from_raw(w as u32, h as u32, img)
        .unwrap()
        .save(&png)
        .unwrap();
    b.open(&srv.addr, &png);
    let bx = [10usize, 8, 34, 36];
    b.drag_box(bx, 1);
    let shot = b.cmd("GET", "/screenshot", None);
    let shot_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/serve-web-screenshot.png");
    std::fs::write(&shot_path, b64decode(shot.as_str().unwrap())).unwrap();
    eprintln!("screenshot: {}", shot_path.display());
    let file = b.download(&downloads, "seg_ct.png");
    let got = read_png_mask(&file);
    let want = infer_png(&ckpt, &png, bx, &dir.join("infer"));
    assert_eq!(got, want, "downloaded mask differs from medsam infer");
    eprintln!(
        "web mask: {} of {} pixels",
        got.iter().filter(|&&m| m).count(),
        h * w
    );
}

/// A NIfTI volume in Chromium: a box on the middle slice, a positive and a negative click (each
/// re-segments), two undos back to the box's mask; the downloaded NIfTI has the input's shape
/// and spacing, the box's mask equals `medsam infer` on that slice, and no other slice is set.
#[test]
fn web_page_points_undo_and_nifti_download_in_chromium() {
    let Some((dir, ckpt, srv, downloads, b)) = browser_case("web3d") else {
        return;
    };
    let (d, h, w) = (3usize, 48usize, 40usize);
    let vol = volume(d, h, w);
    let nii = dir.join("ct.nii.gz");
    let spacing = [0.7, 0.8, 2.5];
    medsam::io::nifti::write_nifti_gz(&nii, [d, h, w], &vol, spacing).unwrap();
    b.open(&srv.addr, &nii);
    let z = d / 2;
    let bx = [10usize, 8, 34, 36];
    b.drag_box(bx, 1);
    let labels = "return Array.from(S.labels[S.z]).reduce((a, v) => a + (v > 0), 0)";
    let n_box = b.exec(labels);
    b.exec("document.getElementById('mode-pos').click(); return null;");
    b.click(20, 20, 2);
    b.exec("document.getElementById('mode-neg').click(); return null;");
    b.click(30, 30, 3);
    let n_points = b.exec(labels);
    for _ in 0..2 {
        b.exec("window.undone = false; document.getElementById('undo').click(); return null;");
        b.wait_for(
            "return document.getElementById('status').textContent.startsWith('undone')",
            "undo",
        );
        b.exec("document.getElementById('status').textContent = ''; return null;");
    }
    let file = b.download(&downloads, "seg_ct.nii.gz");
    let seg = medsam::io::nifti::read_nifti(&file).unwrap();
    assert_eq!(seg.shape, [d, h, w]);
    assert!(
        seg.spacing
            .iter()
            .zip(spacing)
            .all(|(a, b)| (a - b).abs() < 1e-6),
        "{:?}",
        seg.spacing
    );
    let got: Vec<bool> = seg.data[z * h * w..(z + 1) * h * w]
        .iter()
        .map(|&v| v > 0.0)
        .collect();
    let want = infer_slice(&ckpt, &vol, (h, w), z, bx, &dir);
    assert_eq!(
        got, want,
        "after two undos the mask differs from medsam infer's box"
    );
    let elsewhere = seg
        .data
        .iter()
        .enumerate()
        .filter(|(i, &v)| v > 0.0 && i / (h * w) != z);
    assert_eq!(elsewhere.count(), 0);
    eprintln!(
        "web 3D: box {n_box} px, with +/- points {n_points} px, after undo {}",
        got.iter().filter(|&&m| m).count()
    );
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// 8 clients × 50 box requests on their own cached slice (tiny LiteMedSAM, loopback): zero
/// errors; latency percentiles and memory are printed, not judged (the machine may be busy).
#[test]
fn load_8_clients_x_50_requests() {
    let dir = tmpdir("load");
    let ckpt = tiny_checkpoint(&dir);
    let (h, w) = (64usize, 64usize);
    let png = dir.join("img.png");
    save_phantom(&png, h, w);
    let bytes = std::fs::read(&png).unwrap();
    let srv = start(&ckpt, &[]);
    let addr = srv.addr.clone();
    // Two rounds: the second shows whether memory keeps growing.
    for round in 1..=2 {
        let t0 = std::time::Instant::now();
        let handles: Vec<_> = (0..8)
            .map(|c| {
                let (addr, bytes) = (addr.clone(), bytes.clone());
                std::thread::spawn(move || {
                    let (st, _, b) = http(&addr, "POST", "/api/open?name=img.png", &[], &bytes);
                    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
                    let token = json(&b)["token"].as_str().unwrap().to_string();
                    let mut lat = Vec::new();
                    for i in 0..50 {
                        let body = serde_json::json!({"z": 0, "label": 1,
                            "box": [8 + (c + i) % 5, 10, 50, 54 - i % 3]})
                        .to_string();
                        let t = std::time::Instant::now();
                        let (st, _, out) = http(
                            &addr,
                            "POST",
                            "/api/segment",
                            &[
                                ("X-Lease-Token", &token),
                                ("Content-Type", "application/json"),
                            ],
                            body.as_bytes(),
                        );
                        lat.push(t.elapsed().as_secs_f64() * 1e3);
                        assert_eq!(st, 200, "{}", String::from_utf8_lossy(&out));
                        assert_eq!(out.len(), h * w);
                    }
                    lat
                })
            })
            .collect();
        let mut all: Vec<f64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let wall = t0.elapsed().as_secs_f64();
        let firsts: Vec<f64> = all.chunks(50).map(|c| c[0]).collect();
        all.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| all[((all.len() - 1) as f64 * p).round() as usize];
        let rss1 = rss_kib(srv.child.id());
        eprintln!(
            "load: {} requests, 0 errors, {wall:.1} s; latency p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms; \
             first request per client (encode) max {:.1} ms; server RSS after round {round}: {:?} KiB",
            all.len(),
            pct(0.5),
            pct(0.95),
            all[all.len() - 1],
            firsts.iter().cloned().fold(0.0, f64::max),
                rss1
        );
        assert_eq!(all.len(), 400);
    }
}

// ---- MedSAM2 and DICOM through the web API ----

/// A tiny SAM 2 (tests/fixtures/sam2/tiny.json's configuration, parameters filled from their
/// names by the library's `named_init`, as tests/models/sam2_parity.rs does) saved as a MedSAM2
/// `.pt` with its config file; `None` (and a SKIPPED line) when the fixture is absent.
fn tiny_medsam2(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    use medsam::models::sam2::{sam2_utils::named_init, Sam2Base, Sam2Config};
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sam2/tiny.json");
    let Ok(text) = std::fs::read_to_string(&fx) else {
        eprintln!("SKIPPED: {} missing", fx.display());
        return None;
    };
    let meta: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cfg: Sam2Config = serde_json::from_value(meta["config"].clone()).unwrap();
    let mut m = Sam2Base::new(&cfg, 0, Device::Cpu).unwrap();
    named_init(&mut m).unwrap();
    let ckpt = dir.join("MedSAM2_tiny_test.pt");
    let sd = medsam::weights::state_dict_value(m.state_dict()).unwrap();
    save_pth(&ckpt, &Value::str_dict([("model", sd)])).unwrap();
    let cfg_path = dir.join("medsam2_cfg.json");
    let json = serde_json::json!({ "model": meta["config"].clone() });
    std::fs::write(&cfg_path, json.to_string()).unwrap();
    Some((ckpt, cfg_path))
}

/// Opens `file` through `/api/open`; returns the session token and the answer.
fn web_open(addr: &str, file: &Path) -> (String, serde_json::Value) {
    let name = file.file_name().unwrap().to_string_lossy().to_string();
    let bytes = std::fs::read(file).unwrap();
    let (st, _, b) = http(addr, "POST", &format!("/api/open?name={name}"), &[], &bytes);
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
    let v = json(&b);
    (v["token"].as_str().unwrap().to_string(), v)
}

/// A box on one slice with MedSAM2 segments the whole volume in the background; progress is
/// reported frame by frame and the downloaded NIfTI equals `medsam infer --model-type medsam2`
/// with that box and key slice.
#[test]
fn web_medsam2_box_propagates_like_medsam_infer() {
    let dir = tmpdir("medsam2");
    let Some((ckpt, cfg)) = tiny_medsam2(&dir) else {
        return;
    };
    let (d, h, w) = (5usize, 36usize, 44usize);
    let vol = volume(d, h, w);
    let nii = dir.join("case.nii.gz");
    medsam::io::nifti::write_nifti_gz(&nii, [d, h, w], &vol, [0.8, 0.8, 2.5]).unwrap();
    let srv = start_with(&ckpt, &cfg, &["--model-type", "medsam2"]);
    let a = srv.addr.as_str();
    let (token, info) = web_open(a, &nii);
    assert_eq!(info["model"], "medsam2");
    let lease = [("X-Lease-Token", token.as_str())];
    let (z, bx) = (2usize, [12usize, 8, 34, 30]);
    let body = serde_json::json!({"z": z, "label": 1, "box": bx}).to_string();
    let (st, _, b) = http(a, "POST", "/api/segment", &lease, body.as_bytes());
    assert_eq!(st, 202, "{}", String::from_utf8_lossy(&b));
    assert_eq!(json(&b)["total"], d + 1);
    let mut seen = Vec::new();
    let p = loop {
        let (st, _, b) = http(a, "GET", "/api/progress", &lease, b"");
        assert_eq!(st, 200);
        let p = json(&b);
        seen.push(p["done"].as_u64().unwrap());
        if p["finished"] == true {
            break p;
        }
        // Slices can be viewed while it runs.
        assert_eq!(http(a, "GET", "/api/labels?z=0", &lease, b"").0, 200);
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(p["error"].is_null(), "{p}");
    assert_eq!(p["done"], d + 1, "{p}");
    assert!(seen.windows(2).all(|s| s[0] <= s[1]), "{seen:?}");
    let (st, _, nii_bytes) = http(a, "GET", "/api/download", &lease, b"");
    assert_eq!(st, 200);
    let got_path = dir.join("web_seg.nii.gz");
    std::fs::write(&got_path, nii_bytes).unwrap();
    let got = medsam::io::nifti::read_nifti(&got_path).unwrap();
    let out = dir.join("infer");
    let o = Command::new(env!("CARGO_BIN_EXE_medsam"))
        .args(["infer", "--model-type", "medsam2", "-c"])
        .arg(&ckpt)
        .arg("--model-config")
        .arg(&cfg)
        .arg("-i")
        .arg(&nii)
        .arg("-o")
        .arg(&out)
        .arg("--box3d")
        .arg(format!("[{},{},0,{},{},{d}]", bx[0], bx[1], bx[2], bx[3]))
        .args(["--key-slice", &z.to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = medsam::io::nifti::read_nifti(out.join("seg_case.nii.gz")).unwrap();
    assert_eq!(got.shape, want.shape);
    assert_eq!(got.spacing, want.spacing);
    assert_eq!(
        got.data, want.data,
        "web volume mask differs from medsam infer"
    );
    let n = got.data.iter().filter(|&&v| v > 0.0).count();
    eprintln!("medsam2 web: {n} voxels over {d} slices (tiny random model); progress {seen:?}");
    // Undo takes the whole propagation back.
    let (st, _, b) = http(a, "POST", "/api/undo", &lease, b"");
    assert_eq!(st, 200);
    if n > 0 {
        assert!(json(&b)["z"].is_u64());
        let (_, _, l) = http(a, "GET", &format!("/api/labels?z={z}"), &lease, b"");
        assert!(l.iter().all(|&v| v == 0));
    }
}

/// [`volume`] as floats, not integers in 0–255 (so a MedSAM2 server must convert it as `medsam
/// infer --model-type medsam2` does).
fn float_volume(d: usize, h: usize, w: usize) -> Vec<f32> {
    volume(d, h, w)
        .iter()
        .enumerate()
        .map(|(i, &v)| v as f32 * 7.25 - 40.0 + (i % 7) as f32 * 0.5)
        .collect()
}

/// A MedSAM2 protocol test's directory, tiny checkpoint and config, and a float `d × h × w`
/// volume (not uint8, so the server must convert it as `medsam infer --model-type medsam2`
/// does) as `vol.npy` (float32) and `vol.nii.gz`; `None` when the fixture is absent.
fn medsam2_case(name: &str, (d, h, w): (usize, usize, usize)) -> Option<[PathBuf; 5]> {
    let dir = tmpdir(name);
    let (ckpt, cfg) = tiny_medsam2(&dir)?;
    let vol = float_volume(d, h, w);
    let npy = dir.join("vol.npy");
    medsam::io::npy::write_npy_f32(&npy, &[d, h, w], &vol).unwrap();
    let nii = dir.join("vol.nii.gz");
    medsam::io::nifti::write_nifti_gz(&nii, [d, h, w], &vol, [1.0; 3]).unwrap();
    Some([dir, ckpt, cfg, npy, nii])
}

/// `medsam infer --model-type medsam2` on `nii` with one `--box3d` (and `--points` when given);
/// returns the label volume.
fn infer_medsam2(
    ckpt: &Path,
    cfg: &Path,
    nii: &Path,
    box3d: [usize; 6],
    points: Option<&str>,
    out: &Path,
) -> Vec<u8> {
    let b = box3d.map(|v| v.to_string()).join(",");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_medsam"));
    cmd.args(["infer", "--model-type", "medsam2", "-c"])
        .arg(ckpt)
        .arg("--model-config")
        .arg(cfg)
        .arg("-i")
        .arg(nii)
        .arg("-o")
        .arg(out)
        .arg("--box3d")
        .arg(format!("[{b}]"));
    if let Some(p) = points {
        cmd.args(["--points", p]);
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stem = nii
        .file_name()
        .unwrap()
        .to_string_lossy()
        .replace(".nii.gz", "");
    let seg = medsam::io::nifti::read_nifti(out.join(format!("seg_{stem}.nii.gz"))).unwrap();
    seg.data.iter().map(|&v| v as u8).collect()
}

/// A saved 0/1 (or label) `.npy` buffer of `shape` as 0/1 bytes.
fn read_mask_npy(path: &Path, shape: [usize; 3]) -> Vec<u8> {
    let a = medsam::io::npy::read_npy(path).unwrap();
    assert_eq!(a.shape, shape.to_vec(), "{}", path.display());
    a.to_u8()
        .unwrap()
        .iter()
        .map(|&v| u8::from(v > 0))
        .collect()
}

/// The half-open bounding box `[[lo, hi]; 3]` of the non-zero voxels.
fn nonzero_bbox(m: &[u8], [_, h, w]: [usize; 3]) -> Option<serde_json::Value> {
    let (mut lo, mut hi) = ([usize::MAX; 3], [0usize; 3]);
    for (i, _) in m.iter().enumerate().filter(|(_, &v)| v > 0) {
        let at = [i / (h * w), (i / w) % h, i % w];
        for k in 0..3 {
            lo[k] = lo[k].min(at[k]);
            hi[k] = hi[k].max(at[k] + 1);
        }
    }
    (lo[0] != usize::MAX)
        .then(|| serde_json::json!([[lo[0], hi[0]], [lo[1], hi[1]], [lo[2], hi[2]]]))
}

/// How many slices hold a voxel of the mask.
fn slices_with_voxels(m: &[u8], d: usize) -> usize {
    m.chunks(m.len() / d)
        .filter(|s| s.iter().any(|&v| v > 0))
        .count()
}

/// A MedSAM2 protocol run: `medsam serve --model-type medsam2` on a [`medsam2_case`], the client
/// `script` with the box `[z, y0, y1, x0, x1]`, and `medsam infer --model-type medsam2 --box3d
/// [x0,y0,z,x1,y1,z]` on the same volume; `None` when the fixture is absent.
struct Medsam2Run {
    summary: serde_json::Value,
    /// dir, ckpt, cfg, npy, nii
    case: [PathBuf; 5],
    srv: Server,
    /// `medsam infer`'s labels for the box.
    want: Vec<u8>,
}

fn medsam2_run(
    name: &str,
    script: &str,
    shape: [usize; 3],
    zbox: [usize; 5],
) -> Option<Medsam2Run> {
    let [d, h, w] = shape;
    let case = medsam2_case(name, (d, h, w))?;
    let [dir, ckpt, cfg, npy, nii] = &case;
    let srv = start_with(ckpt, cfg, &["--model-type", "medsam2"]);
    let summary = run_client(script, &srv.addr, npy, zbox, dir, &[]);
    let [z, y0, y1, x0, x1] = zbox;
    let want = infer_medsam2(
        ckpt,
        cfg,
        nii,
        [x0, y0, z, x1, y1, z],
        None,
        &dir.join("box"),
    );
    eprintln!(
        "medsam2 {script}: box gives {} voxels on {} of {d} slices (tiny model)",
        want.iter().filter(|&&v| v > 0).count(),
        slices_with_voxels(&want, d)
    );
    assert!(
        slices_with_voxels(&want, d) > 1,
        "the tiny model's mask should reach beyond the key slice"
    );
    Some(Medsam2Run {
        summary,
        case,
        srv,
        want,
    })
}

/// With MedSAM2 the real `nninteractive-client`'s box on slice 3 segments the whole volume:
/// the buffer equals `medsam infer --model-type medsam2 --box3d [x0,y0,3,x1,y1,3]` on the same
/// volume (as NIfTI), the answer's box is the mask's, undo clears it, and a click in the box
/// equals that command with the click as `--points`. /capabilities says what is honoured.
#[test]
fn nninteractive_client_medsam2_box_segments_volume_like_medsam_infer() {
    if !python_has(&["nnInteractive.inference.remote"], "nninteractive-client") {
        return;
    }
    let shape = [6usize, 64, 64];
    let zbox @ [z, y0, y1, x0, x1] = [3usize, 14, 46, 18, 50];
    let Some(run) = medsam2_run("nnia-medsam2", "nninteractive_client.py", shape, zbox) else {
        return;
    };
    let (summary, [dir, ckpt, cfg, _, nii]) = (&run.summary, &run.case);
    assert_eq!(
        summary["original_image_shape"],
        serde_json::json!([1, shape[0], shape[1], shape[2]])
    );
    assert_eq!(summary["undo"], true);
    assert_eq!(summary["after_undo_voxels"], 0);
    assert_eq!(summary["float32_int16_same"], true);
    assert_eq!(summary["lasso"], 400);
    assert_eq!(summary["heartbeat"], true);
    let got = read_mask_npy(&dir.join("after_box.npy"), shape);
    assert_eq!(
        got, run.want,
        "server volume differs from medsam infer --model-type medsam2"
    );
    assert_eq!(
        summary["paste_bbox"],
        nonzero_bbox(&run.want, shape).unwrap_or(serde_json::Value::Null),
        "the answer's box is not the changed region"
    );
    // The click refines the box's prompt on its slice: `--points` with the same box.
    let (cy, cx) = ((y0 + y1) / 2, (x0 + x1) / 2);
    let got = read_mask_npy(&dir.join("after_point.npy"), shape);
    let want = infer_medsam2(
        ckpt,
        cfg,
        nii,
        [x0, y0, z, x1, y1, z],
        Some(&format!("{cx},{cy},1")),
        &dir.join("point"),
    );
    assert_eq!(got, want, "box + click differs from medsam infer --points");

    let (st, _, b) = http(&run.srv.addr, "GET", "/capabilities", &[], b"");
    assert_eq!(st, 200);
    let caps = json(&b);
    assert_eq!(caps["model"], "medsam2");
    assert_eq!(caps["prediction_extent"], "volume");
    assert_eq!(
        caps["supported_interactions"],
        serde_json::json!({"points": true, "bbox2d": true, "bbox3d": false, "lasso": false, "scribble": false})
    );
}

/// The Slicer extension's box on one slice, with MedSAM2: the whole mask it gets back equals
/// `medsam infer --model-type medsam2` with that slice as z range.
#[test]
fn slicer_extension_medsam2_box_segments_volume_like_medsam_infer() {
    if !python_has(&["httpx", "numpy"], "httpx/numpy") {
        return;
    }
    let shape = [6usize, 64, 64];
    let zbox = [3usize, 10, 40, 20, 52];
    let Some(run) = medsam2_run("slicer-medsam2", "slicer_replay.py", shape, zbox) else {
        return;
    };
    let summary = &run.summary;
    assert_eq!(summary["upload_image"][0], 200);
    assert_eq!(summary["bbox_status"], 200);
    assert_eq!(summary["point_status"], 200);
    assert_eq!(summary["lasso"][0], 400);
    assert_eq!(summary["upload_segment"], 200);
    let got = read_mask_npy(&run.case[0].join("slicer_box.npy"), shape);
    assert_eq!(
        got, run.want,
        "Slicer-protocol volume differs from medsam infer"
    );
}

/// The files of tests/fixtures/dicom/ct_case01 and the uint8 volume `medsam infer -i DIR` makes
/// of that folder; `None` (SKIPPED) when absent.
fn dicom_series() -> Option<(Vec<PathBuf>, medsam::io::volume::Volume)> {
    let series = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dicom/ct_case01");
    let Ok(entries) = std::fs::read_dir(&series) else {
        eprintln!("SKIPPED: {} missing", series.display());
        return None;
    };
    let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
    files.sort();
    let s = medsam::io::dicom::read_series(&series, None).unwrap();
    Some((files, medsam::io::volume::u8_volume(&series, &s.volume)))
}

/// A zipped DICOM series opened on the page is the volume `medsam infer -i DIR` reads (same
/// uint8 voxels, shape and spacing); a non-DICOM zip is a 400 with a message.
#[test]
fn web_dicom_zip_is_the_volume_medsam_infer_reads() {
    use std::io::Write as _;
    let Some((files, want)) = dicom_series() else {
        return;
    };
    let dir = tmpdir("dicom");
    let zip_path = dir.join("ct_case01.zip");
    let mut z = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
    for f in &files {
        let name = format!("ct/{}", f.file_name().unwrap().to_string_lossy());
        z.start_file(name, zip::write::SimpleFileOptions::default())
            .unwrap();
        z.write_all(&std::fs::read(f).unwrap()).unwrap();
    }
    z.finish().unwrap();
    let ckpt = tiny_checkpoint(&dir);
    let srv = start(&ckpt, &[]);
    let a = srv.addr.as_str();
    let (token, info) = web_open(a, &zip_path);
    let (d, h, w) = want.shape;
    assert_eq!(info["shape"], serde_json::json!([d, h, w]));
    let lease = [("X-Lease-Token", token.as_str())];
    let (st, _, got) = http(a, "GET", "/api/volume", &lease, b"");
    assert_eq!(st, 200);
    assert!(
        got == want.data,
        "uploaded DICOM volume differs from the folder read"
    );
    // A box on it segments, and the NIfTI download has the series' spacing.
    let body = serde_json::json!({"z": d / 2, "label": 1, "box": [8, 8, w - 8, h - 8]});
    let (st, _, b) = http(
        a,
        "POST",
        "/api/segment",
        &lease,
        body.to_string().as_bytes(),
    );
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
    let (st, _, nii) = http(a, "GET", "/api/download", &lease, b"");
    assert_eq!(st, 200);
    std::fs::write(dir.join("seg.nii.gz"), nii).unwrap();
    let seg = medsam::io::nifti::read_nifti(dir.join("seg.nii.gz")).unwrap();
    assert_eq!(seg.shape, [d, h, w]);
    assert!(
        seg.spacing
            .iter()
            .zip(want.spacing)
            .all(|(a, b)| (a - b).abs() < 1e-6),
        "{:?}",
        seg.spacing
    );
    // Not a DICOM series.
    let bad = dir.join("bad.zip");
    let mut z = zip::ZipWriter::new(std::fs::File::create(&bad).unwrap());
    z.start_file("a.txt", zip::write::SimpleFileOptions::default())
        .unwrap();
    z.write_all(b"hello").unwrap();
    z.finish().unwrap();
    let (st, _, b) = http(
        a,
        "POST",
        "/api/open?name=bad.zip",
        &[],
        &std::fs::read(&bad).unwrap(),
    );
    assert_eq!(st, 400);
    assert!(json(&b)["detail"].is_string());
}

/// Several DICOM files picked on the page are zipped by it and read as the series folder is.
#[test]
fn web_page_dicom_files_in_chromium() {
    let Some((files, want)) = dicom_series() else {
        return;
    };
    let Some((_dir, _ckpt, srv, _downloads, b)) = browser_case("webdicom") else {
        return;
    };
    b.open_files(&srv.addr, &files);
    let (d, h, w) = want.shape;
    assert_eq!(b.exec("return S.shape"), serde_json::json!([d, h, w]));
    let sum: u64 = want.data.iter().map(|&v| v as u64).sum();
    assert_eq!(b.exec("return S.vol.reduce((a, v) => a + v, 0)"), sum);
}

// ---- the v2 protocol request by request; leases, timeouts, shutdown, the request log ----

use medsam::serve::nnia::{self, DType};

/// An `NNIA` body: `shape`, `dtype` and the little-endian bytes `data`.
fn nnia_bytes(shape: &[usize], dtype: DType, data: Vec<u8>) -> Vec<u8> {
    nnia::pack(&nnia::Array {
        shape: shape.to_vec(),
        dtype,
        data,
    })
    .unwrap()
}

/// The value of header `name` (lower-case).
fn header<'a>(hs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    hs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A v2 client by hand: a lease on the server at `addr`.
#[derive(Clone)]
struct V2 {
    addr: String,
    lease: String,
}

impl V2 {
    fn claim(addr: &str) -> V2 {
        let (st, _, b) = http(addr, "POST", "/claim", &[], b"");
        assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
        V2 {
            addr: addr.to_string(),
            lease: json(&b)["lease_token"].as_str().unwrap().to_string(),
        }
    }

    /// A request with the lease and `extra` headers.
    fn call(
        &self,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut hs = vec![("X-Lease-Token", self.lease.as_str())];
        hs.extend_from_slice(extra);
        http(&self.addr, method, path, &hs, body)
    }

    /// POSTs JSON; returns the status, the answer's `X-Meta` (else its JSON body) and its body.
    fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value, Vec<u8>) {
        let (st, hs, b) = self.call(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        );
        let meta = match header(&hs, "x-meta") {
            Some(m) => serde_json::from_str(m).unwrap(),
            None => json(&b),
        };
        (st, meta, b)
    }

    /// `set_image` of an array of `shape`; returns the status and the JSON answer.
    fn set_image(&self, shape: &[usize], dtype: DType, data: Vec<u8>) -> (u16, serde_json::Value) {
        let (st, _, b) = self.call(
            "POST",
            "/set_image",
            &[("X-Meta", r#"{"image_properties":{"spacing":[1,1,1]}}"#)],
            &nnia_bytes(shape, dtype, data),
        );
        (st, json(&b))
    }

    /// Slice `z` (axis 0) of the session's labels on the server (the web API reads any session).
    fn labels(&self, z: usize) -> Vec<u8> {
        let (st, _, b) = self.call("GET", &format!("/api/labels?z={z}"), &[], b"");
        assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
        b
    }
}

/// Writes a prediction answer (`bbox` of its meta, the `NNIA` sub-array of its body) into the
/// 0/1 buffer `buf` of `shape`, as the client does.
fn paste(buf: &mut [u8], [_, n1, n2]: [usize; 3], meta: &serde_json::Value, body: &[u8]) {
    let Some(b) = meta["bbox"].as_array() else {
        return;
    };
    let r: Vec<[usize; 2]> = b
        .iter()
        .map(|p| [0, 1].map(|i| p[i].as_u64().unwrap() as usize))
        .collect();
    let a = nnia::unpack(body, 1 << 30).unwrap();
    assert_eq!(
        a.shape,
        r.iter().map(|[lo, hi]| hi - lo).collect::<Vec<_>>()
    );
    let mut k = 0;
    for x in r[0][0]..r[0][1] {
        for y in r[1][0]..r[1][1] {
            for z in r[2][0]..r[2][1] {
                buf[(x * n1 + y) * n2 + z] = u8::from(a.dtype.read_f64(&a.data, k) != 0.0);
                k += 1;
            }
        }
    }
}

/// The v2 endpoints one by one (tiny LiteMedSAM): wrong ranks, channels, lying or cut blosc2
/// chunks, wrong buffer types and shapes, boxes and points outside the image, lasso and scribble
/// → 400 JSON (in both protocols); a box kept for `/predict` (whose answer equals `medsam infer`),
/// a reset, an initial segmentation and its undo, a release. The page fetches nothing from
/// elsewhere.
#[test]
fn v2_protocol_edits_and_errors() {
    let dir = tmpdir("v2");
    let ckpt = tiny_checkpoint(&dir);
    let srv = start(&ckpt, &[]);
    let a = srv.addr.as_str();
    let (st, hs, page) = http(a, "GET", "/", &[], b"");
    assert_eq!(st, 200);
    assert!(header(&hs, "content-type")
        .unwrap()
        .starts_with("text/html"));
    let page = String::from_utf8(page).unwrap();
    assert!(page.contains("<canvas"));
    for remote in ["http://", "https://", "src=\"//", "href=\"//", "@import"] {
        assert!(!page.contains(remote), "the page loads {remote}…");
    }
    // The Slicer protocol's paths before an upload, and its unsupported interactions.
    let (st, _, b) = http(
        a,
        "POST",
        "/add_bbox_interaction",
        &[],
        br#"{"outer_point_one":[0,0,0],"outer_point_two":[0,4,4],"positive_click":true}"#,
    );
    assert_eq!(st, 400);
    assert!(json(&b)["detail"]
        .as_str()
        .unwrap()
        .contains("upload_image"));
    for p in ["/add_scribble_interaction", "/add_lasso_interaction"] {
        let (st, _, b) = http(a, "POST", p, &[], b"");
        assert_eq!(st, 400, "{p}");
        assert!(json(&b)["detail"]
            .as_str()
            .unwrap()
            .contains("not supported"));
    }

    let c = V2::claim(a);
    let (d, h, w) = (4usize, 48usize, 40usize);
    let shape = [d, h, w];
    let vol = volume(d, h, w);
    for (s, n) in [
        (vec![d, h, w], d * h * w),
        (vec![2, d, h, w], 2 * d * h * w),
        (vec![1, 0, h, w], 0),
    ] {
        let (st, e) = c.set_image(&s, DType::U8, vec![7; n]);
        assert_eq!(st, 400, "{s:?}: {e}");
        assert!(e["detail"].is_string());
    }
    // A blosc2 chunk whose header claims more bytes than the array has, and a cut chunk.
    let good = nnia_bytes(&[1, d, h, w], DType::U8, vol.clone());
    let chunk = 8 + "uint8".len() + 8 * 4 + 4 + 16;
    let mut lying = good.clone();
    let nbytes = u32::from_le_bytes(lying[chunk + 4..chunk + 8].try_into().unwrap());
    lying[chunk + 4..chunk + 8].copy_from_slice(&(nbytes + 64).to_le_bytes());
    let cut = good[..good.len() - 10].to_vec();
    for body in [lying, cut] {
        let (st, _, b) = c.call("POST", "/set_image", &[], &body);
        assert_eq!(st, 400, "{}", String::from_utf8_lossy(&b));
        assert!(json(&b)["detail"].is_string());
    }
    let (st, info) = c.set_image(&[1, d, h, w], DType::U8, vol.clone());
    assert_eq!(st, 200, "{info}");
    assert_eq!(
        info["original_image_shape"],
        serde_json::json!([1, d, h, w])
    );
    for (body, why) in [
        (
            serde_json::json!({"shape": shape, "dtype": "float32"}),
            "dtype",
        ),
        (
            serde_json::json!({"shape": [d, h, w + 1], "dtype": "uint8"}),
            "shape",
        ),
        (serde_json::json!({"shape": shape}), "dtype"),
    ] {
        let (st, e, _) = c.post("/set_target_buffer", body);
        assert_eq!(st, 400, "{e}");
        assert!(e["detail"].as_str().unwrap().contains(why), "{e}");
    }
    let target = serde_json::json!({"shape": shape, "dtype": "uint8"});
    assert_eq!(c.post("/set_target_buffer", target).0, 200);
    let boxed =
        |b: serde_json::Value| serde_json::json!({"bbox_coords": b, "include_interaction": true});
    for (b, why) in [
        (serde_json::json!([[9, 10], [4, 20], [4, 20]]), "outside"),
        (serde_json::json!([[1, 2], [60, 70], [4, 20]]), "outside"),
        (serde_json::json!([[1, 2], [4, 4], [4, 20]]), "empty"),
        (serde_json::json!([[0, 3], [4, 20], [4, 20]]), "3D box"),
        (serde_json::json!([[1, 2], [4, 20]]), "bbox_coords"),
    ] {
        let (st, e, _) = c.post("/add_bbox_interaction", boxed(b.clone()));
        assert_eq!(st, 400, "{b}: {e}");
        assert!(e["detail"].as_str().unwrap().contains(why), "{b}: {e}");
    }
    let (st, e, _) = c.post(
        "/add_point_interaction",
        serde_json::json!({"coordinates": [1, 50, 3], "include_interaction": true}),
    );
    assert_eq!(st, 400, "{e}");
    assert!(e["detail"].as_str().unwrap().contains("outside"), "{e}");
    let (st, e, _) = c.post(
        "/add_bbox_interaction",
        serde_json::json!({"bbox_coords": [[1, 2], [4, 20], [4, 20]], "include_interaction": "yes"}),
    );
    assert_eq!(st, 400, "{e}");
    assert!(e["detail"]
        .as_str()
        .unwrap()
        .contains("include_interaction"));
    for p in ["/add_scribble_interaction", "/add_lasso_interaction"] {
        assert_eq!(c.post(p, serde_json::json!({})).0, 400, "{p}");
    }

    // A box kept for /predict, then run: `medsam infer`'s mask on that slice.
    let (z, bx) = (2usize, [10usize, 8, 34, 36]);
    let (st, m, _) = c.post(
        "/add_bbox_interaction",
        serde_json::json!({"bbox_coords": [[z, z + 1], [bx[1], bx[3]], [bx[0], bx[2]]],
            "include_interaction": true, "run_prediction": false}),
    );
    assert_eq!((st, &m["ran_prediction"]), (200, &serde_json::json!(false)));
    assert!(
        c.labels(z).iter().all(|&l| l == 0),
        "run_prediction false changed the mask"
    );
    let (st, m, body) = c.post("/predict", serde_json::json!({"force_full_refine": false}));
    assert_eq!(
        (st, &m["ran_prediction"]),
        (200, &serde_json::json!(true)),
        "{m}"
    );
    let mut buf = vec![0u8; d * h * w];
    paste(&mut buf, shape, &m, &body);
    let want = infer_slice(&ckpt, &vol, (h, w), z, bx, &dir);
    assert!(want.iter().any(|&v| v), "the tiny model's mask is empty");
    let got: Vec<bool> = buf[z * h * w..(z + 1) * h * w]
        .iter()
        .map(|&v| v > 0)
        .collect();
    assert_eq!(got, want, "/predict differs from medsam infer");
    assert_eq!(c.labels(z).iter().map(|&l| l > 0).collect::<Vec<_>>(), want);
    let (st, m, _) = c.post("/predict", serde_json::json!({}));
    assert_eq!((st, &m["ran_prediction"]), (200, &serde_json::json!(false)));
    // The same box as a negative one clears what it segments: here everything; undo brings it
    // back.
    let (st, m, body) = c.post(
        "/add_bbox_interaction",
        serde_json::json!({"bbox_coords": [[z, z + 1], [bx[1], bx[3]], [bx[0], bx[2]]],
            "include_interaction": false}),
    );
    assert_eq!(
        (st, &m["ran_prediction"]),
        (200, &serde_json::json!(true)),
        "{m}"
    );
    paste(&mut buf, shape, &m, &body);
    assert!(buf.iter().all(|&v| v == 0), "a negative box left voxels");
    assert!(c.labels(z).iter().all(|&l| l == 0));
    let (st, m, body) = c.post("/undo", serde_json::json!({}));
    assert_eq!((st, &m["ran_prediction"]), (200, &serde_json::json!(true)));
    paste(&mut buf, shape, &m, &body);
    let got: Vec<bool> = buf[z * h * w..(z + 1) * h * w]
        .iter()
        .map(|&v| v > 0)
        .collect();
    assert_eq!(got, want, "undo of the negative box");
    // Reset: the mask and the undo history go.
    assert_eq!(c.post("/reset_interactions", serde_json::json!({})).0, 200);
    assert!(c.labels(z).iter().all(|&l| l == 0));
    let (st, m, _) = c.post("/undo", serde_json::json!({}));
    assert_eq!((st, &m["ran_prediction"]), (200, &serde_json::json!(false)));
    // An initial segmentation (of the wrong shape: 400), then undone.
    let wrong = nnia_bytes(&[d, h, w + 1], DType::U8, vec![0; d * h * (w + 1)]);
    let (st, _, _) = c.call("POST", "/add_initial_seg_interaction", &[], &wrong);
    assert_eq!(st, 400);
    let mut init = vec![0u8; d * h * w];
    for y in 5..15 {
        for x in 6..20 {
            init[(h + y) * w + x] = 1;
        }
    }
    let (st, hs, _) = c.call(
        "POST",
        "/add_initial_seg_interaction",
        &[("X-Meta", r#"{"run_prediction":false}"#)],
        &nnia_bytes(&shape, DType::U8, init.clone()),
    );
    assert_eq!(st, 200);
    let m: serde_json::Value = serde_json::from_str(header(&hs, "x-meta").unwrap()).unwrap();
    assert_eq!(m["ran_prediction"], false);
    assert_eq!(c.labels(1), init[h * w..2 * h * w]);
    let (st, m, body) = c.post("/undo", serde_json::json!({}));
    assert_eq!((st, &m["ran_prediction"]), (200, &serde_json::json!(true)));
    assert_eq!(m["bbox"], serde_json::json!([[0, d], [0, h], [0, w]]));
    let mut buf = init.clone();
    paste(&mut buf, shape, &m, &body);
    assert!(
        buf.iter().all(|&v| v == 0),
        "undo's answer does not clear the buffer"
    );
    assert!(c.labels(1).iter().all(|&l| l == 0));
    // Release: the lease is gone.
    assert_eq!(c.call("POST", "/release", &[], b"").0, 200);
    assert_eq!(c.call("GET", "/lease_status", &[], b"").0, 410);
}

/// Leases expire on time, not at the next sweep: an idle lease after `--idle-timeout` even while
/// heartbeats arrive (its slot is free at once: with `--max-sessions 1` a second claim is 503,
/// then 200), a silent lease after `--liveness-timeout` while a heartbeating one lives on; a web
/// session sends no heartbeats and only expires when idle.
#[test]
fn leases_expire_on_time_and_free_their_slot() {
    let dir = tmpdir("leases");
    let ckpt = tiny_checkpoint(&dir);
    let srv = start(&ckpt, &["--max-sessions", "1", "--idle-timeout", "1"]);
    let a = srv.addr.as_str();
    let c = V2::claim(a);
    let (st, _, b) = http(a, "POST", "/claim", &[], b"");
    assert_eq!(st, 503, "{}", String::from_utf8_lossy(&b));
    assert!(json(&b)["detail"].as_str().unwrap().contains("capacity"));
    let t0 = std::time::Instant::now();
    let mut beats = Vec::new();
    while t0.elapsed() < Duration::from_millis(1600) {
        beats.push(c.post("/heartbeat", serde_json::json!({})).0);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(beats[0], 200);
    assert_eq!(
        *beats.last().unwrap(),
        410,
        "heartbeats kept an idle lease: {beats:?}"
    );
    assert_eq!(c.call("GET", "/lease_status", &[], b"").0, 410);
    V2::claim(a);
    drop(srv);

    let srv = start(&ckpt, &["--liveness-timeout", "1"]);
    let a = srv.addr.as_str();
    let (beating, silent) = (V2::claim(a), V2::claim(a));
    let png = dir.join("img.png");
    save_phantom(&png, 32, 32);
    let (web, _) = web_open(a, &png);
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(beating.post("/heartbeat", serde_json::json!({})).0, 200);
    }
    assert_eq!(silent.call("GET", "/lease_status", &[], b"").0, 410);
    assert_eq!(beating.call("GET", "/lease_status", &[], b"").0, 200);
    let (st, _, b) = http(
        a,
        "GET",
        "/api/labels?z=0",
        &[("X-Lease-Token", web.as_str())],
        b"",
    );
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
}

/// A request that has not finished within `--request-timeout` (its body never comes) is
/// answered 503 with a JSON error, not left hanging; the server keeps answering.
#[test]
fn request_timeout_answers_503() {
    let dir = tmpdir("timeout");
    let ckpt = tiny_checkpoint(&dir);
    let srv = start(&ckpt, &["--request-timeout", "1"]);
    let a = srv.addr.as_str();
    let c = V2::claim(a);
    let mut s = TcpStream::connect(a).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "POST /set_image HTTP/1.1\r\nHost: {a}\r\nX-Lease-Token: {}\r\nContent-Length: 1000\r\n\r\n",
        c.lease
    );
    s.write_all(head.as_bytes()).unwrap();
    let (st, _, b) = read_response(&mut s);
    assert_eq!(st, 503, "{}", String::from_utf8_lossy(&b));
    assert!(json(&b)["detail"].as_str().unwrap().contains("longer than"));
    assert_eq!(http(a, "GET", "/healthz", &[], b"").0, 200);
    assert_eq!(c.call("GET", "/lease_status", &[], b"").0, 200);
}

/// Ctrl-C (SIGINT) stops the server cleanly: a request in flight when the signal comes is still
/// answered and the process exits 0; every request left one log line (method, path, status, ms).
#[test]
fn sigint_answers_the_request_in_flight_and_each_request_is_logged() {
    let dir = tmpdir("sigint");
    let ckpt = tiny_checkpoint(&dir);
    let log = dir.join("serve.log");
    let out = Stdio::from(std::fs::File::create(&log).unwrap());
    let mut srv = spawn_server(&ckpt, &tiny_config(), &[], out);
    let a = srv.addr.clone();
    assert_eq!(http(&a, "GET", "/healthz", &[], b"").0, 200);
    assert_eq!(http(&a, "GET", "/nope", &[], b"").0, 404);
    let c = V2::claim(&a);
    let body = nnia_bytes(&[1, 2, 16, 16], DType::U8, volume(2, 16, 16));
    let mut s = TcpStream::connect(&a).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!(
        "POST /set_image HTTP/1.1\r\nHost: {a}\r\nX-Lease-Token: {}\r\nContent-Length: {}\r\n\r\n",
        c.lease,
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    // The head is in; the signal comes while the server waits for the body.
    std::thread::sleep(Duration::from_millis(500));
    let kill = Command::new("kill")
        .args(["-INT", &srv.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    std::thread::sleep(Duration::from_millis(300));
    s.write_all(&body).unwrap();
    let (st, _, b) = read_response(&mut s);
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
    assert_eq!(
        json(&b)["original_image_shape"],
        serde_json::json!([1, 2, 16, 16])
    );
    let status = srv.child.wait().unwrap();
    assert!(status.success(), "exit after SIGINT: {status:?}");
    let mut rest = String::new();
    srv.child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut rest)
        .unwrap();
    assert!(rest.contains("stopped"), "{rest:?}");
    let log = std::fs::read_to_string(&log).unwrap();
    for want in [
        "GET /healthz 200 ",
        "GET /nope 404 ",
        "POST /claim 200 ",
        "POST /set_image 200 ",
    ] {
        assert!(
            log.lines()
                .any(|l| l.starts_with(want) && l.ends_with(" ms")),
            "no log line {want:?} in:\n{log}"
        );
    }
}

/// Two objects on a 2D image through the web API: each keeps its own label (the second wins
/// where they overlap), each equals `medsam infer` with its box, the PNG download holds the
/// labels, and undo takes back the second object only.
#[test]
fn web_objects_keep_their_labels() {
    let dir = tmpdir("objects");
    let ckpt = tiny_checkpoint(&dir);
    let (h, w) = (48usize, 40usize);
    let png = dir.join("img.png");
    save_phantom(&png, h, w);
    let srv = start(&ckpt, &[]);
    let a = srv.addr.as_str();
    let (token, _) = web_open(a, &png);
    let lease = [("X-Lease-Token", token.as_str())];
    let boxes = [[4usize, 6, 26, 30], [14, 18, 38, 44]];
    let mut labels = Vec::new();
    for (i, b) in boxes.iter().enumerate() {
        let body = serde_json::json!({"z": 0, "label": i + 1, "box": b}).to_string();
        let (st, _, l) = http(a, "POST", "/api/segment", &lease, body.as_bytes());
        assert_eq!(st, 200, "{}", String::from_utf8_lossy(&l));
        labels = l;
    }
    let want: Vec<Vec<bool>> = boxes
        .iter()
        .enumerate()
        .map(|(i, &b)| infer_png(&ckpt, &png, b, &dir.join(format!("infer{i}"))))
        .collect();
    assert!(
        want.iter().all(|m| m.iter().any(|&v| v)),
        "a tiny-model mask is empty"
    );
    let is = |l: u8| labels.iter().map(|&v| v == l).collect::<Vec<_>>();
    assert_eq!(is(2), want[1], "object 2");
    let first: Vec<bool> = want[0]
        .iter()
        .zip(&want[1])
        .map(|(&a, &b)| a && !b)
        .collect();
    assert_eq!(is(1), first, "object 1 (where object 2 does not cover it)");
    let (st, _, png_bytes) = http(a, "GET", "/api/download", &lease, b"");
    assert_eq!(st, 200);
    let got = image::load_from_memory(&png_bytes)
        .unwrap()
        .to_luma8()
        .into_raw();
    assert_eq!(got, labels, "the PNG holds the labels");
    let (st, _, b) = http(a, "POST", "/api/undo", &lease, b"");
    assert_eq!((st, json(&b)["z"].as_u64()), (200, Some(0)));
    let (_, _, l) = http(a, "GET", "/api/labels?z=0", &lease, b"");
    let only_first: Vec<u8> = want[0].iter().map(|&v| u8::from(v)).collect();
    assert_eq!(l, only_first, "undo did not restore object 1 alone");
}

/// A JPEG and a challenge `.npz` open through the web API as `medsam infer` reads them: the
/// JPEG's box mask equals `medsam infer`'s on that file, the `.npz` volume is its `imgs` and its
/// mask downloads as NIfTI.
#[test]
fn web_opens_jpeg_and_npz() {
    let dir = tmpdir("formats");
    let ckpt = tiny_checkpoint(&dir);
    let srv = start(&ckpt, &[]);
    let a = srv.addr.as_str();
    let (h, w) = (48usize, 40usize);
    let jpg = dir.join("photo.jpg");
    save_phantom(&jpg, h, w);
    let (token, info) = web_open(a, &jpg);
    assert_eq!(info["shape"], serde_json::json!([1, h, w]));
    let lease = [("X-Lease-Token", token.as_str())];
    let bx = [10usize, 8, 34, 36];
    let body = serde_json::json!({"z": 0, "label": 1, "box": bx}).to_string();
    let (st, _, l) = http(a, "POST", "/api/segment", &lease, body.as_bytes());
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&l));
    let want = infer_png(&ckpt, &jpg, bx, &dir.join("infer"));
    assert_eq!(l.iter().map(|&v| v > 0).collect::<Vec<_>>(), want);

    let (d, h, w) = (3usize, 32usize, 36usize);
    let vol = volume(d, h, w);
    let npz = dir.join("case.npz");
    let imgs = medsam::io::npy::encode_npy_u8(&[d, h, w], &vol);
    medsam::io::volume::write_npz_members(&npz, &[("imgs", imgs)]).unwrap();
    let (token, info) = web_open(a, &npz);
    assert_eq!(info["shape"], serde_json::json!([d, h, w]));
    let lease = [("X-Lease-Token", token.as_str())];
    let (st, _, got) = http(a, "GET", "/api/volume", &lease, b"");
    assert_eq!(st, 200);
    assert!(got == vol, "the .npz volume differs from its imgs");
    let body = serde_json::json!({"z": 1, "label": 1, "box": [6, 6, 30, 26]}).to_string();
    assert_eq!(
        http(a, "POST", "/api/segment", &lease, body.as_bytes()).0,
        200
    );
    let (st, _, seg) = http(a, "GET", "/api/download", &lease, b"");
    assert_eq!(st, 200);
    std::fs::write(dir.join("seg.nii.gz"), seg).unwrap();
    let seg = medsam::io::nifti::read_nifti(dir.join("seg.nii.gz")).unwrap();
    assert_eq!(seg.shape, [d, h, w]);

    // A 2-D challenge `.npz` (imgs (H, W, 3), boxes (N, 4)) opens as one RGB slice, not as a
    // volume of H slices.
    let rgb: Vec<u8> = vol[..h * w]
        .iter()
        .flat_map(|&v| [v, v / 2, 255 - v])
        .collect();
    let npz2d = dir.join("slice2d.npz");
    let imgs = medsam::io::npy::encode_npy_u8(&[h, w, 3], &rgb);
    let boxes = medsam::io::npy::encode_npy(&medsam::io::npy::NpyArray {
        shape: vec![1, 4],
        data: medsam::io::npy::NpyData::F64(vec![6.0, 6.0, 30.0, 26.0]),
    });
    medsam::io::volume::write_npz_members(&npz2d, &[("imgs", imgs), ("boxes", boxes)]).unwrap();
    let (token, info) = web_open(a, &npz2d);
    assert_eq!(info["shape"], serde_json::json!([1, h, w]));
    let lease = [("X-Lease-Token", token.as_str())];
    let body = serde_json::json!({"z": 0, "label": 1, "box": [6, 6, 30, 26]}).to_string();
    let (st, _, l) = http(a, "POST", "/api/segment", &lease, body.as_bytes());
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&l));
    assert_eq!(l.len(), h * w);
}

/// A NIfTI volume with an oblique affine and an origin, opened on the page and segmented: the
/// downloaded mask carries the input's header geometry, as `medsam infer` writes it.
#[test]
fn web_nifti_download_keeps_the_input_geometry() {
    let dir = tmpdir("geometry");
    let ckpt = tiny_checkpoint(&dir);
    let (d, h, w) = (3usize, 48usize, 40usize);
    let nii = dir.join("ct.nii.gz");
    let affine = [
        [0.0, -0.8, 0.0, 10.5],
        [-0.7, 0.0, 0.0, -20.25],
        [0.0, 0.0, 2.5, 33.0],
    ];
    medsam::io::nifti::write_nifti_gz_affine(
        &nii,
        [d, h, w],
        &volume(d, h, w),
        [0.7, 0.8, 2.5],
        Some(affine),
    )
    .unwrap();
    let srv = start(&ckpt, &[]);
    let a = srv.addr.as_str();
    let (token, _) = web_open(a, &nii);
    let lease = [("X-Lease-Token", token.as_str())];
    let body = serde_json::json!({"z": 1, "label": 1, "box": [10, 8, 34, 36]}).to_string();
    assert_eq!(
        http(a, "POST", "/api/segment", &lease, body.as_bytes()).0,
        200
    );
    let (st, _, seg) = http(a, "GET", "/api/download", &lease, b"");
    assert_eq!(st, 200);
    let got = dir.join("seg.nii.gz");
    std::fs::write(&got, seg).unwrap();
    let want = medsam::io::nifti::read_nifti_geometry(&nii).unwrap();
    assert_eq!(medsam::io::nifti::read_nifti_geometry(&got).unwrap(), want);
    assert_eq!(
        medsam::io::nifti::read_nifti(&got).unwrap().shape,
        [d, h, w]
    );
}

/// `medsam serve --precision`: the engine encodes a slice as `LitePredictor::with_precision`
/// does at the same precision; at bf16 the embedding differs from f32's where bf16 pays on this
/// CPU (else it is f32's exactly).
#[test]
fn engine_encodes_at_its_precision() {
    use medsam::infer::InferPrecision;
    use medsam::infer_lite::{ImageU8, LitePredictor};
    use medsam::weights::AnyModel;
    let dir = tmpdir("precision");
    let ckpt = tiny_checkpoint(&dir);
    let cfg = tiny_config();
    let load = || {
        medsam::models::load::load_any_model(&ckpt, None, Some(cfg.as_path()), Device::Cpu)
            .unwrap()
            .0
    };
    let (h, w) = (48usize, 40usize);
    let img = ImageU8::new(h, w, 1, volume(1, h, w)).unwrap();
    let mut embeddings = Vec::new();
    for p in [InferPrecision::F32, InferPrecision::Bf16] {
        let got = Engine::from_any(load(), p).encode(&img).unwrap();
        let AnyModel::Lite(m) = load() else {
            panic!("the tiny checkpoint is a LiteMedSAM")
        };
        let want = LitePredictor::with_precision(&m, &img, p).unwrap();
        let got = got.tensor.to_vec().unwrap();
        assert_eq!(got, want.embedding.to_vec().unwrap(), "{}", p.name());
        embeddings.push(got);
    }
    let plan = medsam_kernels::gemm::bf16_plan();
    let same = embeddings[0] == embeddings[1];
    if plan.precision == medsam_kernels::gemm::Precision::Bf16 {
        assert!(
            !same,
            "bf16 gave f32's embedding: the setting did not reach the encoder"
        );
    } else {
        assert!(same, "bf16 falls back to f32 here ({})", plan.reason);
    }
}

/// Slice embeddings are cached per session, the least recently used dropped first: prompts on a
/// cached slice do not run the encoder, and give the mask a fresh session gives.
#[test]
fn embeddings_are_cached_per_session_and_slice() {
    use medsam::serve::engine::Prompt;
    use medsam::serve::session::Volume;
    let dir = tmpdir("cache");
    let ckpt = tiny_checkpoint(&dir);
    let (m, _) = medsam::models::load::load_any_model(
        &ckpt,
        None,
        Some(tiny_config().as_path()),
        Device::Cpu,
    )
    .unwrap();
    let engine = Engine::from_any(m, medsam::infer::InferPrecision::F32);
    let compute = std::sync::Mutex::new(());
    let (d, h, w) = (3usize, 48usize, 40usize);
    let v = Volume {
        shape: [d, h, w],
        channels: 1,
        data: volume(d, h, w),
        spacing: [1.0; 3],
        geometry: None,
    };
    let run = |s: &mut Session, z: usize, x0: f32| {
        let p = Prompt {
            bbox: Some([x0, 8.0, 34.0, 36.0]),
            points: Vec::new(),
        };
        s.segment_plane(&engine, &compute, (0, z), 1, p, false)
            .unwrap();
        s.read_region([[z, z + 1], [0, h], [0, w]])
    };
    let mut s = Session::new(2);
    s.set_volume(v.clone());
    let first = run(&mut s, 0, 10.0);
    // (slice, encoder runs so far): slice 0 again is cached; with two slices cached, slice 2
    // drops slice 1 (0 was used last), so slice 0 is still cached and slice 1 is not.
    for (z, encodes) in [(0, 1), (1, 2), (0, 2), (2, 3), (0, 3), (1, 4)] {
        run(&mut s, z, 12.0);
        assert_eq!(s.encodes, encodes, "after slice {z}");
    }
    assert_eq!(run(&mut s, 0, 10.0), first);
    assert_eq!(s.encodes, 4);
    let mut fresh = Session::new(2);
    fresh.set_volume(v);
    assert_eq!(run(&mut fresh, 0, 10.0), first);
    assert_eq!(fresh.encodes, 1);
}

/// The API key comparison looks at every byte and the lengths (it has no early exit, so its time
/// does not tell how much of a guess was right; that part is by construction, not timed here).
#[test]
fn api_key_comparison_checks_every_byte() {
    use medsam::serve::ct_eq;
    assert!(ct_eq(b"s3cret", b"s3cret"));
    assert!(ct_eq(b"", b""));
    for other in [
        &b"s3cre"[..],
        b"s3cret!",
        b"S3cret",
        b"s3creT",
        b"",
        b"s3cret\0",
    ] {
        assert!(!ct_eq(b"s3cret", other), "{other:?}");
        assert!(!ct_eq(other, b"s3cret"), "{other:?}");
    }
}

/// MedSAM2 through the v2 protocol with a box on a coronal (axis 1) and a sagittal (axis 2)
/// slice: the object is tracked through the slices of that axis, and the buffer equals
/// `medsam infer --model-type medsam2` on the volume re-stacked along that axis (as NIfTI) with
/// the box on that slice, stacked back.
#[test]
fn medsam2_boxes_on_axes_1_and_2_segment_along_that_axis() {
    let shape @ [n0, n1, n2] = [24usize, 12, 16];
    let Some([dir, ckpt, cfg, _, _]) = medsam2_case("medsam2-axes", (n0, n1, n2)) else {
        return;
    };
    let vol = float_volume(n0, n1, n2);
    let srv = start_with(&ckpt, &cfg, &["--model-type", "medsam2"]);
    let c = V2::claim(&srv.addr);
    let bytes: Vec<u8> = vol.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(c.set_image(&[1, n0, n1, n2], DType::F32, bytes).0, 200);
    let target = serde_json::json!({"shape": shape, "dtype": "uint8"});
    assert_eq!(c.post("/set_target_buffer", target).0, 200);
    // (axis, slice, rows along axis 0, columns along the remaining axis)
    for (axis, i, (r0, r1), (c0, c1)) in [
        (1usize, 5usize, (4usize, 20usize), (3usize, 13usize)),
        (2, 7, (4, 20), (2, 10)),
    ] {
        assert_eq!(c.post("/reset_interactions", serde_json::json!({})).0, 200);
        let other = 3 - axis;
        let mut coords = [[r0, r1]; 3];
        coords[axis] = [i, i + 1];
        coords[other] = [c0, c1];
        let (st, m, body) = c.post(
            "/add_bbox_interaction",
            serde_json::json!({"bbox_coords": coords, "include_interaction": true}),
        );
        assert_eq!(st, 200, "{m}");
        let mut got = vec![0u8; n0 * n1 * n2];
        paste(&mut got, shape, &m, &body);
        // The re-stacked volume: slice k is the plane (axis, k), rows along axis 0.
        let (d, h, w) = (shape[axis], n0, shape[other]);
        let at = |k: usize, r: usize, q: usize| {
            if axis == 1 {
                (r * n1 + k) * n2 + q
            } else {
                (r * n1 + q) * n2 + k
            }
        };
        let mut stacked = vec![0f32; d * h * w];
        for k in 0..d {
            for r in 0..h {
                for q in 0..w {
                    stacked[(k * h + r) * w + q] = vol[at(k, r, q)];
                }
            }
        }
        let nii = dir.join(format!("axis{axis}.nii.gz"));
        medsam::io::nifti::write_nifti_gz(&nii, [d, h, w], &stacked, [1.0; 3]).unwrap();
        let out = dir.join(format!("axis{axis}"));
        let m2 = infer_medsam2(&ckpt, &cfg, &nii, [c0, r0, i, c1, r1, i], None, &out);
        let mut want = vec![0u8; n0 * n1 * n2];
        for k in 0..d {
            for r in 0..h {
                for q in 0..w {
                    want[at(k, r, q)] = u8::from(m2[(k * h + r) * w + q] > 0);
                }
            }
        }
        eprintln!(
            "medsam2 axis {axis}: {} voxels on {} of {d} slices (tiny model)",
            want.iter().filter(|&&v| v > 0).count(),
            slices_with_voxels(&m2, d)
        );
        assert!(
            slices_with_voxels(&m2, d) > 1,
            "the tiny model's mask should reach beyond the key slice"
        );
        assert_eq!(
            got, want,
            "axis {axis}: differs from medsam infer on the re-stacked volume"
        );
    }
}

// ---- in-process servers: the test holds the model lock to order events exactly ----

use medsam::serve::engine::Engine;
use medsam::serve::session::Session;
use medsam::serve::{lock, AppState, ServeOptions};
use std::sync::{Arc, Mutex};

/// A server in this process (so the test can hold its model lock); stopped when dropped.
struct InProcess {
    addr: String,
    state: Arc<AppState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_in_process(engine: Engine, opts: ServeOptions) -> InProcess {
    let state = AppState::new(engine, opts);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let st = state.clone();
    let thread = std::thread::spawn(move || {
        let stop = async move {
            let _ = rx.await;
        };
        rt.block_on(medsam::serve::serve(listener, st, stop))
            .unwrap();
    });
    InProcess {
        addr,
        state,
        stop: Some(tx),
        thread: Some(thread),
    }
}

/// The tiny MedSAM2 as `medsam serve --model-type medsam2` loads it.
fn medsam2_engine(ckpt: &Path, cfg: &Path) -> Engine {
    let (m, _) = medsam::models::sam2::load_sam2(ckpt, Some(cfg), None, Device::Cpu).unwrap();
    let mut p = medsam::models::sam2::VideoPredictor::new(m);
    p.fill_hole_area = 8;
    Engine::Medsam2(Box::new(p))
}

fn session_of(st: &AppState, token: &str) -> Arc<Mutex<Session>> {
    lock(&st.sessions)[token].clone()
}

/// Waits until `n` model jobs run on the session (a job counts once it has taken its input).
fn wait_jobs(sess: &Mutex<Session>, n: usize) {
    for _ in 0..3000 {
        if lock(sess).jobs == n {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the session never had {n} jobs running");
}

/// The tiny MedSAM2, a `[6, 64, 64]` uint8 volume, options whose upload decoder returns that
/// volume, and a box on slice 3 as v2 `bbox_coords`; `None` when the fixture is absent.
struct LateCase {
    ckpt: PathBuf,
    cfg: PathBuf,
    vol: Vec<u8>,
    decoder: medsam::serve::Decoder,
}

const LATE_SHAPE: [usize; 3] = [6, 64, 64];

fn late_case(name: &str) -> Option<LateCase> {
    let dir = tmpdir(name);
    let (ckpt, cfg) = tiny_medsam2(&dir)?;
    let [d, h, w] = LATE_SHAPE;
    let vol = volume(d, h, w);
    let v = medsam::serve::session::Volume {
        shape: LATE_SHAPE,
        channels: 1,
        data: vol.clone(),
        spacing: [1.0; 3],
        geometry: None,
    };
    let decoder: medsam::serve::Decoder = Arc::new(
        move |_: &str, _: &[u8]| -> medsam::Result<medsam::serve::session::Volume> {
            Ok(v.clone())
        },
    );
    Some(LateCase {
        ckpt,
        cfg,
        vol,
        decoder,
    })
}

impl LateCase {
    fn server(&self, opts: impl FnOnce(&mut ServeOptions)) -> InProcess {
        let mut o = ServeOptions::new(self.decoder.clone());
        opts(&mut o);
        serve_in_process(medsam2_engine(&self.ckpt, &self.cfg), o)
    }

    /// A lease with the volume and a uint8 target buffer.
    fn client(&self, srv: &InProcess) -> V2 {
        let c = V2::claim(&srv.addr);
        let [d, h, w] = LATE_SHAPE;
        assert_eq!(
            c.set_image(&[1, d, h, w], DType::U8, self.vol.clone()).0,
            200
        );
        let target = serde_json::json!({"shape": LATE_SHAPE, "dtype": "uint8"});
        assert_eq!(c.post("/set_target_buffer", target).0, 200);
        c
    }
}

fn late_box() -> serde_json::Value {
    serde_json::json!({"bbox_coords": [[3, 4], [14, 46], [18, 50]], "include_interaction": true})
}

/// A MedSAM2 prompt runs without its session's lock, so other requests can change the session
/// meanwhile. With the model lock held, each box below has taken its input and waits: then an
/// undo, a reset, a new image or an initial segmentation comes, and the box's result is dropped
/// (409) instead of written over it; with nothing in between, it is written.
#[test]
fn medsam2_result_is_dropped_when_the_session_changed_meanwhile() {
    let Some(case) = late_case("late-v2") else {
        return;
    };
    let srv = case.server(|_| {});
    let c = case.client(&srv);
    let sess = session_of(&srv.state, &c.lease);
    let [d, h, w] = LATE_SHAPE;
    // A box whose job waits for the model lock while `during` runs; returns its status and
    // answer, and the labels right after `during`.
    let box_while = |during: &dyn Fn()| {
        let hold = lock(&srv.state.compute);
        let job = {
            let c = c.clone();
            std::thread::spawn(move || c.post("/add_bbox_interaction", late_box()))
        };
        wait_jobs(&sess, 1);
        during();
        let snapshot = lock(&sess).labels.clone();
        drop(hold);
        let (st, m, _) = job.join().unwrap();
        (st, m, snapshot)
    };
    let (st, m, _) = box_while(&|| {});
    assert_eq!(st, 200, "{m}");
    assert!(
        lock(&sess).labels.iter().any(|&l| l > 0),
        "the tiny model's mask is empty"
    );
    let initial_seg = || {
        let zeros = nnia_bytes(&LATE_SHAPE, DType::U8, vec![0; d * h * w]);
        c.call("POST", "/add_initial_seg_interaction", &[], &zeros)
            .0
    };
    let new_image = || c.set_image(&[1, d, h, w], DType::U8, case.vol.clone()).0;
    let changes: [(&str, &dyn Fn() -> u16); 4] = [
        ("undo", &|| c.post("/undo", serde_json::json!({})).0),
        ("reset", &|| {
            c.post("/reset_interactions", serde_json::json!({})).0
        }),
        ("new image", &new_image),
        ("initial segmentation", &initial_seg),
    ];
    for (what, change) in changes {
        let (st, m, snapshot) = box_while(&|| assert_eq!(change(), 200, "{what}"));
        assert_eq!(st, 409, "{what}: {m}");
        assert!(m["detail"].as_str().unwrap().contains("dropped"), "{m}");
        assert!(
            lock(&sess).labels == snapshot,
            "{what}: a stale result was written"
        );
    }
}

/// On the page a MedSAM2 box propagates in the background: undo is refused (409) while it runs,
/// and a reset of the session meanwhile (through the v2 endpoints) ends it with an error and no
/// mask.
#[test]
fn web_propagation_refuses_undo_and_is_dropped_after_a_reset() {
    let Some(case) = late_case("late-web") else {
        return;
    };
    let srv = case.server(|_| {});
    let a = srv.addr.as_str();
    let (st, _, b) = http(a, "POST", "/api/open?name=case.nii.gz", &[], b"x");
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
    let web = json(&b)["token"].as_str().unwrap().to_string();
    let lease = [("X-Lease-Token", web.as_str())];
    let sess = session_of(&srv.state, &web);
    let segment = serde_json::json!({"z": 3, "label": 1, "box": [18, 14, 50, 46]}).to_string();
    // Undisturbed, the box gives a mask.
    let (st, _, b) = http(a, "POST", "/api/segment", &lease, segment.as_bytes());
    assert_eq!(st, 202, "{}", String::from_utf8_lossy(&b));
    wait_jobs(&sess, 0);
    assert!(
        lock(&sess).labels.iter().any(|&l| l > 0),
        "the tiny model's mask is empty"
    );
    assert_eq!(http(a, "POST", "/api/undo", &lease, b"").0, 200);
    let hold = lock(&srv.state.compute);
    let (st, _, b) = http(a, "POST", "/api/segment", &lease, segment.as_bytes());
    assert_eq!(st, 202, "{}", String::from_utf8_lossy(&b));
    wait_jobs(&sess, 1);
    let (st, _, b) = http(a, "POST", "/api/undo", &lease, b"");
    assert_eq!(st, 409, "{}", String::from_utf8_lossy(&b));
    assert_eq!(http(a, "POST", "/reset_interactions", &lease, b"{}").0, 200);
    drop(hold);
    wait_jobs(&sess, 0);
    let (st, _, b) = http(a, "GET", "/api/progress", &lease, b"");
    assert_eq!(st, 200);
    let p = json(&b);
    assert_eq!(p["finished"], true, "{p}");
    assert!(p["error"].as_str().unwrap_or("").contains("dropped"), "{p}");
    assert!(lock(&sess).labels.iter().all(|&l| l == 0));
}

/// A MedSAM2 box still waiting for the model at its deadline is answered 503 by the server; its
/// result, when it comes, is not written.
#[test]
fn medsam2_result_after_the_deadline_is_dropped() {
    let Some(case) = late_case("late-deadline") else {
        return;
    };
    let srv = case.server(|o| o.request_timeout = Duration::from_secs(2));
    let c = case.client(&srv);
    let sess = session_of(&srv.state, &c.lease);
    let hold = lock(&srv.state.compute);
    let job = {
        let c = c.clone();
        std::thread::spawn(move || c.post("/add_bbox_interaction", late_box()))
    };
    wait_jobs(&sess, 1);
    let (st, m, _) = job.join().unwrap();
    assert_eq!(st, 503, "{m}");
    assert!(m["detail"].as_str().unwrap().contains("longer than"), "{m}");
    drop(hold);
    wait_jobs(&sess, 0);
    assert!(
        lock(&sess).labels.iter().all(|&l| l == 0),
        "a result finished after the deadline was written"
    );
    // Undisturbed and in time, the same box writes its mask (so the check above can fail).
    let srv = case.server(|_| {});
    let c = case.client(&srv);
    let sess = session_of(&srv.state, &c.lease);
    assert_eq!(c.post("/add_bbox_interaction", late_box()).0, 200);
    assert!(
        lock(&sess).labels.iter().any(|&l| l > 0),
        "the tiny model's mask is empty"
    );
}
