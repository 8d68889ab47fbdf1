//! Criterion per-op throughput at MedSAM ViT-B shapes. Throughput is reported as "elements" =
//! floating-point operations, so criterion's `Gelem/s` reads as GFLOP/s; time per iteration
//! gives calls/s. Ops whose kernels are still `unimplemented!()` are skipped with a note.
//!
//! `cargo bench --bench ops -- <criterion filter>`, e.g. `-- mm_qkv`.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

fn bench_ops(c: &mut Criterion) {
    let mut group = c.benchmark_group("medsam_vit_b");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    // Probe each op once, with panic messages silenced, so kernels that are still
    // `unimplemented!()` are skipped instead of aborting the whole run.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let runnable: Vec<_> = common::ops()
        .into_iter()
        .filter_map(|op| {
            let mut f = (op.make)();
            match catch_unwind(AssertUnwindSafe(&mut f)) {
                Ok(()) => Some((op, f)),
                Err(_) => {
                    eprintln!("skipping {}: kernel not implemented yet", op.name);
                    None
                }
            }
        })
        .collect();
    std::panic::set_hook(default_hook);
    for (op, mut f) in runnable {
        group.throughput(Throughput::Elements(op.flops as u64));
        group.bench_function(op.name, |b| b.iter(&mut f));
    }
    group.finish();
}

criterion_group!(benches, bench_ops);
criterion_main!(benches);
