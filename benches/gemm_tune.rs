//! GEMM tuning helper: GFLOP/s of one kernel / precision / blocking at the ViT-B GEMM shapes.
//!
//! `cargo bench --bench gemm_tune -- [--kernel avx512|avx512bf16|avx2|scalar|amx] [--bf16]
//!  [--kc N] [--mc N] [--nc N] [--nl2 N] [--pack-a] [--linear] [--reps N] [--m M] [--kn K,N ...]`
//!
//! `--pack-a` packs A even where the kernel could read it in place (`Blocking::force_pack_a`).
//! `--int8` times the dynamically quantized int8 linear (`gemm::int8::linear`, weights quantized
//! once beforehand) instead, in multiply-add pairs per second as GOP/s.

use medsam_kernels::gemm::int8::{self, Int8Weights};
use medsam_kernels::gemm::{
    default_blocking, gemm_tuned, Epilogue, GemmDims, Kernel, Layout, Precision,
};
use medsam_kernels::testing::{data_star as data, sorted_times};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .map(|i| args[i + 1].clone())
    };
    let precision = if args.iter().any(|a| a == "--bf16") {
        Precision::Bf16
    } else {
        Precision::F32
    };
    let kernel = match get("--kernel").as_deref() {
        None => Kernel::best(precision),
        Some("scalar") => Kernel::Scalar,
        Some("avx2") => Kernel::Avx2,
        Some("avx512") => Kernel::Avx512,
        Some("avx512bf16") => Kernel::Avx512Bf16,
        Some("amx") => Kernel::Amx,
        Some(k) => panic!("unknown kernel {k}"),
    };
    let linear = args.iter().any(|a| a == "--linear");
    let int8 = args.iter().any(|a| a == "--int8");
    let reps: usize = get("--reps").map_or(5, |v| v.parse().unwrap());
    let mut blk = default_blocking(kernel, precision);
    let num = |name: &str, d: usize| get(name).map_or(d, |v| v.parse().unwrap());
    blk.kc = num("--kc", blk.kc);
    blk.mc = num("--mc", blk.mc);
    blk.nc = num("--nc", blk.nc);
    blk.nl2 = num("--nl2", blk.nl2);
    blk.force_pack_a |= args.iter().any(|a| a == "--pack-a");
    let m = num("--m", 4096);
    println!(
        "kernel={kernel:?} precision={precision:?} {blk:?} threads={}",
        rayon::current_num_threads()
    );
    // `--kn K,N` (repeatable) replaces the default ViT-B shapes.
    let mut shapes: Vec<(usize, usize)> = args
        .iter()
        .enumerate()
        .filter(|(_, a)| *a == "--kn")
        .filter_map(|(i, _)| {
            let (k, n) = args.get(i + 1)?.split_once(',')?;
            Some((k.parse().ok()?, n.parse().ok()?))
        })
        .collect();
    if shapes.is_empty() {
        shapes = vec![(768, 2304), (768, 3072), (3072, 768)];
    }
    for (k, n) in shapes {
        let (a, b) = (data(m * k, 1), data(k * n, 2));
        let mut c = vec![0.0f32; m * n];
        let (la, lc) = (Layout::row_major(m, k), Layout::row_major(m, n));
        let lb = [Layout::row_major(k, n), Layout::transposed(n, k)][linear as usize];
        let dims = GemmDims { batch: 1, m, n, k };
        let wq = int8.then(|| Int8Weights::quantize(&b, n, k));
        let mut run = || match &wq {
            Some(wq) => int8::linear(&a, k, m, wq, &b, &mut c, n, Epilogue::default()),
            None => gemm_tuned(
                kernel, blk, dims, &a, la, &b, lb, &mut c, lc, false, precision,
            ),
        };
        run();
        let cpu0 = cpu_seconds();
        let times = sorted_times(reps, &mut run);
        let cpu = cpu_seconds() - cpu0;
        let fl = 2.0 * (m * n * k) as f64 / 1e9;
        println!(
            "m={m} k={k} n={n}: median {:.1} GFLOP/s, best {:.1}, per cpu-second {:.1}",
            fl / times[reps / 2],
            fl / times[0],
            fl * reps as f64 / cpu
        );
    }
}

/// CPU time of all threads of this process (Linux schedstat, ns resolution): unlike wall time
/// it does not count time the scheduler gave to other processes on this shared machine.
fn cpu_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return f64::NAN;
    };
    dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .sum::<f64>()
        / 1e9
}
