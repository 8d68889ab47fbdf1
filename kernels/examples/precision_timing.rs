//! Best-of-N time per call of the ViT-B linear shapes (4096 tokens) for every GEMM kernel and
//! precision this CPU can run, each forced: f32, bf16 (`vdpbf16ps`, AMX) and int8 (`vpdpbusd`).
//! The minimum over many calls is the figure least disturbed by other load on the machine.
//!
//! `cargo run --release -p medsam-kernels --example precision_timing [-- --threads N --reps R]`
//! (default: 1 thread, 7 calls per kernel). Prints the bf16 plan and the int8 kernel `gemm`
//! would pick.

use medsam_kernels::gemm::int8::{self, Int8Kernel, Int8Weights};
use medsam_kernels::gemm::{self, Epilogue, GemmDims, Kernel, Layout, Precision};
use std::time::Instant;

use medsam_kernels::testing::data_star as data;

fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (threads, reps) = (arg("--threads", 1), arg("--reps", 7));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    println!("threads={threads} reps={reps} (best of reps)");
    println!("bf16 plan: {:?}", gemm::bf16_plan());
    println!("int8 kernel: {:?}", Int8Kernel::best());
    let m = 4096;
    for (name, k, n) in [
        ("linear_qkv", 768, 2304),
        ("linear_mlp1", 768, 3072),
        ("linear_mlp2", 3072, 768),
    ] {
        let x = data(m * k, 1);
        let wv = data(n * k, 2);
        let mut c = vec![0.0f32; m * n];
        let flops = 2.0 * (m * n * k) as f64;
        let dims = GemmDims { batch: 1, m, n, k };
        let report = |label: String, s: f64| {
            println!(
                "{name:<12} {label:<18} {:>8.2} ms {:>7.1} GFLOP/s",
                s * 1e3,
                flops / s * 1e-9
            )
        };
        for (kernel, p) in [
            (Kernel::Avx512, Precision::F32),
            (Kernel::Avx2, Precision::F32),
            (Kernel::Avx512Bf16, Precision::Bf16),
            (Kernel::Amx, Precision::Bf16),
        ] {
            if !kernel.is_available() {
                continue;
            }
            let s = pool.install(|| {
                best_of(reps, || {
                    gemm::gemm_with(
                        kernel,
                        dims,
                        &x,
                        Layout::row_major(m, k),
                        &wv,
                        Layout::transposed(n, k),
                        &mut c,
                        Layout::row_major(m, n),
                        false,
                        p,
                    )
                })
            });
            report(format!("{kernel:?} {p:?}"), s);
        }
        let w = Int8Weights::quantize(&wv, n, k);
        for kernel in Int8Kernel::ALL {
            if !kernel.is_available() || kernel == Int8Kernel::Scalar {
                continue;
            }
            let s = pool.install(|| {
                best_of(reps, || {
                    int8::linear_with(kernel, &x, k, m, &w, &wv, &mut c, n, Epilogue::default())
                })
            });
            report(format!("{kernel:?} int8"), s);
        }
    }
}
