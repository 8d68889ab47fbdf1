//! Checks that any [`Communicator`] implementation computes what it promises, run on every rank
//! of a job (`examples/dist_selftest.rs`, `tests/dist_mpi.rs`; usable for HCCL too). Values are
//! chosen so that the expected results are exact in f32 regardless of the reduction order.

use super::{average_in_buckets, Communicator};
use crate::error::{Error, Result};
use half::{bf16, f16};

fn fail(what: &str, detail: String) -> Error {
    Error::Other(format!("dist self-test: {what}: {detail}"))
}

fn expect_eq<T: PartialEq + std::fmt::Debug>(what: &str, got: &[T], want: &[T]) -> Result<()> {
    if got.len() != want.len() {
        return Err(fail(
            what,
            format!("length {} != expected {}", got.len(), want.len()),
        ));
    }
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        return Err(fail(
            what,
            format!("element {i}: {:?} != expected {:?}", got[i], want[i]),
        ));
    }
    Ok(())
}

/// The payload rank `r` contributes to the gather checks: lengths differ per rank, rank 0's is
/// empty.
pub fn payload(r: usize) -> Vec<u8> {
    (0..r * 37 + (r % 3) * 1000)
        .map(|i| (i * 7 + r * 13) as u8)
        .collect()
}

/// Runs every check; returns a one-line summary.
pub fn run(comm: &dyn Communicator) -> Result<String> {
    let (r, w) = (comm.rank(), comm.world_size());
    if r >= w || comm.local_rank() >= w {
        return Err(fail(
            "ranks",
            format!(
                "rank {r}, local rank {} in a world of {w}",
                comm.local_rank()
            ),
        ));
    }
    let tri = (w * (w + 1) / 2) as f32;

    // Sum and mean, small and large (several MPI segments / pipeline rounds).
    for n in [1usize, 1000, 3 << 20] {
        let mut buf: Vec<f32> = (0..n)
            .map(|i| ((r + 1) * (i % 1024 + 1)) as f32 + 0.5)
            .collect();
        comm.all_reduce_sum(&mut buf)?;
        let want: Vec<f32> = (0..n)
            .map(|i| (i % 1024 + 1) as f32 * tri + 0.5 * w as f32)
            .collect();
        expect_eq(&format!("all_reduce_sum of {n}"), &buf, &want)?;
    }
    let mut m: Vec<f32> = (0..517).map(|i| (r * 4) as f32 + i as f32).collect();
    comm.all_reduce_mean(&mut m)?;
    let want: Vec<f32> = (0..517).map(|i| 2.0 * (w - 1) as f32 + i as f32).collect();
    expect_eq("all_reduce_mean", &m, &want)?;
    let mut e: Vec<f32> = Vec::new();
    comm.all_reduce_sum(&mut e)?;

    // Half-precision helpers.
    let mut h: Vec<f16> = (0..300)
        .map(|i| f16::from_f32((i % 50) as f32 + r as f32))
        .collect();
    comm.all_reduce_sum_f16(&mut h)?;
    let want: Vec<f16> = (0..300)
        .map(|i| f16::from_f32(((i % 50) * w) as f32 + (tri - w as f32)))
        .collect();
    expect_eq("all_reduce_sum_f16", &h, &want)?;
    let mut b: Vec<bf16> = (0..300)
        .map(|i| bf16::from_f32(((i % 8) * 2 + 2 * r) as f32))
        .collect();
    comm.all_reduce_mean_bf16(&mut b)?;
    let want: Vec<bf16> = (0..300)
        .map(|i| bf16::from_f32(((i % 8) * 2 + w - 1) as f32))
        .collect();
    expect_eq("all_reduce_mean_bf16", &b, &want)?;

    // Broadcast from the first and the last rank.
    for root in [0, w - 1] {
        let mut buf: Vec<f32> = (0..777).map(|i| (r * 1000 + i) as f32).collect();
        comm.broadcast(&mut buf, root)?;
        let want: Vec<f32> = (0..777).map(|i| (root * 1000 + i) as f32).collect();
        expect_eq(&format!("broadcast from {root}"), &buf, &want)?;
    }
    let mut bad = [0f32; 2];
    if comm.broadcast(&mut bad, w).is_ok() && w > 1 {
        return Err(fail(
            "broadcast",
            format!("root {w} outside a world of {w} was accepted"),
        ));
    }

    // Gather of different-length payloads (one empty).
    let all = comm.all_gather_bytes(&payload(r))?;
    if all.len() != w {
        return Err(fail(
            "all_gather_bytes",
            format!("{} entries for {w} ranks", all.len()),
        ));
    }
    for (q, got) in all.iter().enumerate() {
        expect_eq(&format!("all_gather_bytes entry {q}"), got, &payload(q))?;
    }

    // Opaque blob broadcast (HCCL root info): non-roots start with a different length.
    for root in [0, w - 1] {
        let mut blob = if r == root {
            payload(root + 5)
        } else {
            vec![9u8; 3]
        };
        comm.broadcast_bytes(&mut blob, root)?;
        expect_eq(
            &format!("broadcast_bytes from {root}"),
            &blob,
            &payload(root + 5),
        )?;
    }

    // Bucketed averaging equals one plain average over the concatenation, whatever the cap
    // (a cap smaller than one parameter, several parameters per bucket, everything in one).
    let sizes = [3usize, 1, 40, 7, 0, 129, 16, 5];
    let grads: Vec<Vec<f32>> = sizes
        .iter()
        .enumerate()
        .map(|(p, &n)| {
            (0..n)
                .map(|i| ((r + 1) * (p * 31 + i + 1)) as f32 * 0.25)
                .collect()
        })
        .collect();
    let mut plain: Vec<f32> = grads.concat();
    comm.all_reduce_mean(&mut plain)?;
    for cap in [4usize, 64, 600, 1 << 20] {
        let mut g = grads.clone();
        average_in_buckets(comm, &mut g, cap)?;
        let flat = g.concat();
        for (i, (a, b)) in flat.iter().zip(&plain).enumerate() {
            if (a - b).abs() > 1e-6 * b.abs().max(1.0) {
                return Err(fail(
                    &format!("average_in_buckets cap {cap}B"),
                    format!("element {i}: {a} != plain mean {b}"),
                ));
            }
        }
        if g.iter().map(Vec::len).ne(sizes.iter().copied()) {
            return Err(fail(
                "average_in_buckets",
                "parameter lengths changed".into(),
            ));
        }
    }

    comm.barrier()?;
    Ok(format!(
        "dist self-test passed on rank {r} of {w} (local rank {})",
        comm.local_rank()
    ))
}
