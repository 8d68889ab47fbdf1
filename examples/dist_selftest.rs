//! Runs the collective self-test on every rank of an MPI job, or simulates a failed rank.
//!
//! ```text
//! cargo build --release --features mpi --example dist_selftest
//! mpirun -np 2 target/release/examples/dist_selftest                 # all collectives
//! mpirun -np 2 target/release/examples/dist_selftest --dead hang 5   # rank 1 hangs; rank 0 must fail in ~5 s
//! mpirun -np 2 target/release/examples/dist_selftest --dead exit 5   # rank 1 exits before the all-reduce
//! mpirun -np 2 target/release/examples/dist_selftest --dead finalize 5  # rank 1 finalises and returns
//! ```

#[cfg(not(feature = "mpi"))]
fn main() {
    eprintln!("SKIPPED: dist_selftest needs MPI; build with --features mpi");
    std::process::exit(2);
}

#[cfg(feature = "mpi")]
fn main() {
    use medsam::dist::{communicator_from_env, selftest};
    use std::time::{Duration, Instant};

    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dead, timeout) = match args.as_slice() {
        [] => (None, 60),
        [flag, mode, secs]
            if flag == "--dead" && ["hang", "exit", "finalize"].contains(&mode.as_str()) =>
        {
            (
                Some(mode.clone()),
                secs.parse().expect("timeout in seconds"),
            )
        }
        _ => {
            eprintln!("usage: dist_selftest [--dead hang|exit|finalize SECONDS]");
            std::process::exit(2);
        }
    };
    let comm = match communicator_from_env(Duration::from_secs(timeout)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let Some(mode) = dead else {
        match selftest::run(comm.as_ref()) {
            Ok(summary) => println!("{summary}"),
            Err(e) => {
                eprintln!("rank {}: {e}", comm.rank());
                comm.abort(1);
            }
        }
        return;
    };
    if comm.world_size() < 2 {
        eprintln!("--dead needs at least 2 processes");
        comm.abort(2);
    }
    if comm.rank() == 1 {
        if mode == "finalize" {
            eprintln!("rank 1: finalising MPI and leaving before the all-reduce");
            drop(comm);
            return;
        }
        if mode == "exit" {
            eprintln!("rank 1: exiting before the all-reduce");
            std::process::exit(0);
        }
        eprintln!("rank 1: hanging instead of joining the all-reduce");
        std::thread::sleep(Duration::from_secs(3600));
        return;
    }
    let start = Instant::now();
    let mut buf = vec![1.0f32; 1024];
    match comm.all_reduce_sum(&mut buf) {
        Ok(()) => {
            eprintln!(
                "rank {}: all-reduce completed although rank 1 never joined",
                comm.rank()
            );
            comm.abort(4);
        }
        Err(e) => {
            eprintln!(
                "rank {}: failed after {:.1}s: {e}",
                comm.rank(),
                start.elapsed().as_secs_f64()
            );
            comm.abort(3);
        }
    }
}
