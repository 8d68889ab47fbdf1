//! Minimal op benchmark for `compare_torch.py`: one machine-readable line per op,
//! `op=<name> status=ok calls=<n> median_ms=<t> best_ms=<t> gflops=<median> gflops_best=<best> calls_per_s=<median>`
//! or `op=<name> status=unimplemented` when the kernel panics (not merged yet).
//!
//! Usage: `cargo bench --bench opbench -- [--ops name,prefix..] [--min-time SECONDS] [--list]`.
//! Threads: rayon's default, or `RAYON_NUM_THREADS`.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut filter: Vec<String> = Vec::new();
    let mut min_time = 1.0f64;
    let mut list = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--ops" => {
                let v = it.next().expect("--ops needs a value");
                filter.extend(v.split(',').filter(|s| !s.is_empty()).map(String::from));
            }
            "--min-time" => {
                min_time = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--min-time needs seconds");
            }
            "--list" => list = true,
            // `cargo bench` passes `--bench`; ignore it and anything unknown.
            _ => {}
        }
    }
    // An op is selected if its name starts with any filter entry (so `mm_` or `linear` work).
    let selected = |name: &str| filter.is_empty() || filter.iter().any(|f| name.starts_with(f));
    // Unimplemented kernels panic; report them as such instead of the default panic message.
    std::panic::set_hook(Box::new(|_| {}));
    println!("threads={}", rayon::current_num_threads());
    for op in common::ops() {
        if !selected(op.name) {
            continue;
        }
        if list {
            println!("op={}", op.name);
            continue;
        }
        let mut f = (op.make)();
        // Warm-up call: faults in pages, fills packing buffers, starts the rayon pool.
        if catch_unwind(AssertUnwindSafe(&mut f)).is_err() {
            println!("op={} status=unimplemented", op.name);
            continue;
        }
        let mut times = Vec::new();
        let start = Instant::now();
        while times.len() < 3 || (start.elapsed().as_secs_f64() < min_time && times.len() < 1000) {
            let t = Instant::now();
            f();
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(|a, b| a.total_cmp(b));
        let median = times[times.len() / 2];
        let best = times[0];
        println!(
            "op={} status=ok calls={} median_ms={:.4} best_ms={:.4} gflops={:.2} gflops_best={:.2} calls_per_s={:.3}",
            op.name,
            times.len(),
            median * 1e3,
            best * 1e3,
            op.flops / median / 1e9,
            op.flops / best / 1e9,
            1.0 / median
        );
    }
}
