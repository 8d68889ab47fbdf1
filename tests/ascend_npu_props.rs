//! Property tests of the Ascend wrappers against a REAL NPU (CANN + Ascend hardware).
//!
//! Opt-in: `MEDSAM_NPU_TESTS=1`. Without it every test prints
//! "SKIPPED: no NPU (set MEDSAM_NPU_TESTS=1 on an Ascend machine)" to the terminal and
//! returns; it does not claim anything. With it, a runtime that fails to load is a failure.
//!
//! On an Ascend machine:
//!   source /usr/local/Ascend/ascend-toolkit/set_env.sh
//!   MEDSAM_NPU_TESTS=1 cargo test --release --features ascend --test ascend_npu_props
//!
//! Status: written without hardware; never run on an NPU yet (see docs/ASCEND.md).
#![cfg(feature = "ascend")]

use medsam_ffi::ascend::*;
use std::io::Write;

fn npu(test: &str) -> Option<&'static AscendRuntime> {
    if std::env::var("MEDSAM_NPU_TESTS").as_deref() != Ok("1") {
        // Written to the real stderr handle, so the harness does not swallow it.
        let _ = writeln!(
            std::io::stderr(),
            "{test}: SKIPPED: no NPU (set MEDSAM_NPU_TESTS=1 on an Ascend machine)"
        );
        return None;
    }
    let rt = AscendRuntime::load().unwrap_or_else(|e| panic!("MEDSAM_NPU_TESTS=1 but: {e}"));
    assert!(
        rt.device_count().expect("aclrtGetDeviceCount") > 0,
        "no NPU visible"
    );
    Some(rt)
}

/// Small deterministic generator (no external randomness needed for reproducible failures).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() as usize) % (hi - lo + 1)
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| (self.next() % 20001) as f32 / 10000.0 - 1.0)
            .collect()
    }
}

fn close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: npu {g} vs cpu {w}"
        );
    }
}

fn l(d: &[i64]) -> Layout {
    Layout::contiguous(d)
}

fn cpu_mm(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k)
                .map(|p| a[i * k + p] as f64 * b[p * n + j] as f64)
                .sum::<f64>() as f32;
        }
    }
    c
}

const CASES: u64 = 16;

#[test]
fn npu_matmul_matches_cpu_both_paths() {
    let Some(rt) = npu("npu_matmul_matches_cpu_both_paths") else {
        return;
    };
    let dev = rt.device(0).unwrap();
    let stream = dev.stream().unwrap();
    for seed in 0..CASES {
        let mut r = Rng(seed);
        let (m, k, n) = (r.range(1, 96), r.range(1, 96), r.range(1, 96));
        let (ha, hb) = (r.vec(m * k), r.vec(k * n));
        let (a, b) = (dev.upload(&ha).unwrap(), dev.upload(&hb).unwrap());
        let want = cpu_mm(&ha, &hb, m, k, n);
        {
            let path = CubePrecision::Exact;
            let mut c = dev.alloc_elems::<f32>(m * n).unwrap();
            Ops::new(&stream)
                .with_precision(path)
                .matmul(
                    &TensorArg::input::<f32>(&a, l(&[m as i64, k as i64])).unwrap(),
                    &TensorArg::input::<f32>(&b, l(&[k as i64, n as i64])).unwrap(),
                    &TensorArg::output::<f32>(&mut c, l(&[m as i64, n as i64])).unwrap(),
                )
                .unwrap_or_else(|e| panic!("{path:?} m={m} k={k} n={n}: {e}"));
            close(
                &c.read::<f32>(&stream, m * n).unwrap(),
                &want,
                1e-3,
                &format!("{path:?} {m}x{k}x{n}"),
            );
        }
    }
}

#[test]
fn npu_layer_norm_matches_cpu() {
    let Some(rt) = npu("npu_layer_norm_matches_cpu") else {
        return;
    };
    let dev = rt.device(0).unwrap();
    let stream = dev.stream().unwrap();
    for seed in 0..CASES {
        let mut r = Rng(100 + seed);
        let (rows, c) = (r.range(1, 64), r.range(2, 256));
        let (hx, hw, hb) = (r.vec(rows * c), r.vec(c), r.vec(c));
        let (x, w, b) = (
            dev.upload(&hx).unwrap(),
            dev.upload(&hw).unwrap(),
            dev.upload(&hb).unwrap(),
        );
        let mut y = dev.alloc_elems::<f32>(rows * c).unwrap();
        Ops::new(&stream)
            .layer_norm(
                &TensorArg::input::<f32>(&x, l(&[rows as i64, c as i64])).unwrap(),
                &[c as i64],
                Some(&TensorArg::input::<f32>(&w, l(&[c as i64])).unwrap()),
                Some(&TensorArg::input::<f32>(&b, l(&[c as i64])).unwrap()),
                1e-6,
                &TensorArg::output::<f32>(&mut y, l(&[rows as i64, c as i64])).unwrap(),
                None,
                None,
            )
            .unwrap();
        let mut want = Vec::new();
        for row in hx.chunks(c) {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c as f64;
            let rstd = 1.0 / (var + 1e-6).sqrt();
            want.extend(
                row.iter()
                    .enumerate()
                    .map(|(j, &v)| ((v as f64 - mean) * rstd * hw[j] as f64 + hb[j] as f64) as f32),
            );
        }
        close(
            &y.read::<f32>(&stream, rows * c).unwrap(),
            &want,
            1e-3,
            "layer_norm",
        );
    }
}

#[test]
fn npu_softmax_and_gelu_match_cpu() {
    let Some(rt) = npu("npu_softmax_and_gelu_match_cpu") else {
        return;
    };
    let dev = rt.device(0).unwrap();
    let stream = dev.stream().unwrap();
    for seed in 0..CASES {
        let mut r = Rng(200 + seed);
        let (rows, c) = (r.range(1, 32), r.range(1, 128));
        let hx: Vec<f32> = r.vec(rows * c).iter().map(|v| v * 8.0).collect();
        let x = dev.upload(&hx).unwrap();
        let shape = l(&[rows as i64, c as i64]);
        let mut s = dev.alloc_elems::<f32>(rows * c).unwrap();
        Ops::new(&stream)
            .softmax(
                &TensorArg::input::<f32>(&x, shape.clone()).unwrap(),
                -1,
                &TensorArg::output::<f32>(&mut s, shape.clone()).unwrap(),
            )
            .unwrap();
        let mut want = Vec::new();
        for row in hx.chunks(c) {
            let mx = row.iter().cloned().fold(f32::MIN, f32::max);
            let z: f64 = row.iter().map(|&v| ((v - mx) as f64).exp()).sum();
            want.extend(row.iter().map(|&v| (((v - mx) as f64).exp() / z) as f32));
        }
        close(
            &s.read::<f32>(&stream, rows * c).unwrap(),
            &want,
            1e-4,
            "softmax",
        );

        let mut g = dev.alloc_elems::<f32>(rows * c).unwrap();
        Ops::new(&stream)
            .gelu(
                &TensorArg::input::<f32>(&x, shape.clone()).unwrap(),
                GeluApprox::Tanh,
                &TensorArg::output::<f32>(&mut g, shape).unwrap(),
            )
            .unwrap();
        let want: Vec<f32> = hx
            .iter()
            .map(|&v| {
                let v = v as f64;
                (0.5 * v
                    * (1.0
                        + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3)))
                            .tanh())) as f32
            })
            .collect();
        close(
            &g.read::<f32>(&stream, rows * c).unwrap(),
            &want,
            1e-3,
            "gelu",
        );
    }
}

#[test]
fn npu_conv2d_matches_cpu() {
    let Some(rt) = npu("npu_conv2d_matches_cpu") else {
        return;
    };
    let dev = rt.device(0).unwrap();
    let stream = dev.stream().unwrap();
    for seed in 0..CASES / 2 {
        let mut r = Rng(300 + seed);
        let (n, ci, co, h, w, k, s, p) = (
            1,
            r.range(1, 8),
            r.range(1, 8),
            r.range(4, 20),
            r.range(4, 20),
            r.range(1, 3),
            r.range(1, 2),
            r.range(0, 1),
        );
        let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
        let (hx, hw) = (r.vec(n * ci * h * w), r.vec(co * ci * k * k));
        let (x, wt) = (dev.upload(&hx).unwrap(), dev.upload(&hw).unwrap());
        let mut y = dev.alloc_elems::<f32>(n * co * oh * ow).unwrap();
        let d = |v: &[usize]| l(&v.iter().map(|&x| x as i64).collect::<Vec<_>>());
        Ops::new(&stream)
            .conv2d(
                &TensorArg::input::<f32>(&x, d(&[n, ci, h, w])).unwrap(),
                &TensorArg::input::<f32>(&wt, d(&[co, ci, k, k])).unwrap(),
                None,
                [s as i64; 2],
                [p as i64; 2],
                [1, 1],
                1,
                &TensorArg::output::<f32>(&mut y, d(&[n, co, oh, ow])).unwrap(),
            )
            .unwrap();
        let mut want = vec![0f32; co * oh * ow];
        for o in 0..co {
            for i in 0..oh {
                for j in 0..ow {
                    let mut acc = 0f64;
                    for c in 0..ci {
                        for u in 0..k {
                            for v in 0..k {
                                let (yy, xx) = (
                                    (i * s + u) as isize - p as isize,
                                    (j * s + v) as isize - p as isize,
                                );
                                if yy >= 0 && xx >= 0 && (yy as usize) < h && (xx as usize) < w {
                                    acc += hx[(c * h + yy as usize) * w + xx as usize] as f64
                                        * hw[((o * ci + c) * k + u) * k + v] as f64;
                                }
                            }
                        }
                    }
                    want[(o * oh + i) * ow + j] = acc as f32;
                }
            }
        }
        close(
            &y.read::<f32>(&stream, co * oh * ow).unwrap(),
            &want,
            1e-3,
            "conv2d",
        );
    }
}

#[test]
fn npu_allocator_and_copies_roundtrip() {
    let Some(rt) = npu("npu_allocator_and_copies_roundtrip") else {
        return;
    };
    let dev = rt.device(0).unwrap();
    let mut r = Rng(400);
    for _ in 0..64 {
        let n = r.range(1, 1 << 20);
        let host = r.vec(n.min(4096));
        let b = dev.upload(&host).unwrap();
        let mut back = vec![0f32; host.len()];
        b.copy_to_host(&mut back).unwrap();
        assert_eq!(back, host);
    }
    assert!(dev.allocator().stats().cache_hits > 0);
}

#[test]
fn npu_hccl_all_reduce_across_devices() {
    let Some(rt) = npu("npu_hccl_all_reduce_across_devices") else {
        return;
    };
    let ndev = rt.device_count().unwrap();
    if ndev < 2 {
        let _ = writeln!(
            std::io::stderr(),
            "npu_hccl_all_reduce_across_devices: SKIPPED: needs 2 NPUs, found {ndev}"
        );
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let rx = std::sync::Mutex::new(Some(rx));
    std::thread::scope(|s| {
        for rank in 0..2u32 {
            let tx = tx.clone();
            let rx = if rank == 1 {
                rx.lock().unwrap().take()
            } else {
                None
            };
            s.spawn(move || {
                let dev = rt.device(rank as i32).unwrap();
                let stream = dev.stream().unwrap();
                let comm = HcclComm::init(&dev, rank, 2, |bytes| {
                    if rank == 0 {
                        tx.send(bytes.to_vec()).map_err(|e| e.to_string())
                    } else {
                        bytes.copy_from_slice(&rx.unwrap().recv().map_err(|e| e.to_string())?);
                        Ok(())
                    }
                })
                .unwrap();
                let g = dev.upload(&vec![rank as f32 + 1.0; 1024]).unwrap();
                comm.all_reduce_sum_inplace::<f32>(&g, 1024, &stream)
                    .unwrap();
                assert_eq!(g.read::<f32>(&stream, 1024).unwrap(), vec![3.0; 1024]);
            });
        }
    });
}
