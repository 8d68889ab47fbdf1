//! The collective layer for data-parallel training and sharded evaluation. One interface
//! ([`Communicator`]); implementations: a single process (no-op), MPI for CPU processes (feature
//! `mpi`), and HCCL for Ascend devices (feature `ascend`, bootstrapped through MPI).

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use half::{bf16, f16};
use std::time::Duration;

#[cfg(feature = "ascend")]
pub mod hccl;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod selftest;

#[cfg(feature = "mpi")]
pub use self::mpi::MpiCommunicator;

pub trait Communicator: Send + Sync {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Rank among the processes of this node.
    fn local_rank(&self) -> usize;
    /// Element-wise sum across ranks, in place.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()>;
    /// Copies `root`'s buffer to every rank.
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()>;
    /// Every rank's bytes, in rank order.
    fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>>;
    fn barrier(&self) -> Result<()>;

    /// Copies `root`'s bytes (any length) to every rank, e.g. an HCCL root info blob before
    /// `HcclCommInitRootInfo`. The default goes through [`Communicator::all_gather_bytes`].
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<()> {
        check_root("broadcast_bytes", root, self.world_size())?;
        let mine: &[u8] = if self.rank() == root { bytes } else { &[] };
        let mut all = self.all_gather_bytes(mine)?;
        *bytes = std::mem::take(&mut all[root]);
        Ok(())
    }

    /// Ends every process of the job (MPI: `MPI_Abort`). Call after a collective failed, so the
    /// other ranks do not wait for this one.
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }

    fn is_root(&self) -> bool {
        self.rank() == 0
    }
    /// Averages gradient tensors across ranks in place, in buckets of at most `bucket_bytes`
    /// (DDP's reducer). The default stages them through host memory ([`average_in_buckets`]) and
    /// puts the results back on each tensor's device; device communicators (HCCL) override it
    /// to reduce where the gradients live.
    fn average_gradients(&self, grads: &mut [Tensor], bucket_bytes: usize) -> Result<()> {
        average_gradients_on_host(self, grads, bucket_bytes)
    }
    /// Element-wise mean across ranks, in place.
    fn all_reduce_mean(&self, buf: &mut [f32]) -> Result<()> {
        self.all_reduce_sum(buf)?;
        let n = self.world_size() as f32;
        buf.iter_mut().for_each(|x| *x /= n);
        Ok(())
    }
    /// Sum of an f16 buffer; the reduction itself runs in f32 (one rounding at the end).
    fn all_reduce_sum_f16(&self, buf: &mut [f16]) -> Result<()> {
        in_f32(buf, F16, |w| self.all_reduce_sum(w))
    }
    /// Sum of a bf16 buffer; the reduction itself runs in f32 (one rounding at the end).
    fn all_reduce_sum_bf16(&self, buf: &mut [bf16]) -> Result<()> {
        in_f32(buf, BF16, |w| self.all_reduce_sum(w))
    }
    /// Mean of an f16 buffer, reduced in f32.
    fn all_reduce_mean_f16(&self, buf: &mut [f16]) -> Result<()> {
        in_f32(buf, F16, |w| self.all_reduce_mean(w))
    }
    /// Mean of a bf16 buffer, reduced in f32.
    fn all_reduce_mean_bf16(&self, buf: &mut [bf16]) -> Result<()> {
        in_f32(buf, BF16, |w| self.all_reduce_mean(w))
    }
}

/// The conversions of a 16-bit float to and from f32.
type Widen<T> = (fn(T) -> f32, fn(f32) -> T);
const F16: Widen<f16> = (f16::to_f32, f16::from_f32);
const BF16: Widen<bf16> = (bf16::to_f32, bf16::from_f32);

/// Runs `reduce` on an f32 copy of the 16-bit `buf` (converted by `(widen, narrow)`), then writes
/// the result back with one rounding.
fn in_f32<T: Copy>(
    buf: &mut [T],
    (widen, narrow): Widen<T>,
    reduce: impl FnOnce(&mut [f32]) -> Result<()>,
) -> Result<()> {
    let mut wide: Vec<f32> = buf.iter().map(|&x| widen(x)).collect();
    reduce(&mut wide)?;
    buf.iter_mut().zip(&wide).for_each(|(d, &s)| *d = narrow(s));
    Ok(())
}

/// Errors unless `root` is a rank of a world of `world` (`op` names the collective).
pub(crate) fn check_root(op: &str, root: usize, world: usize) -> Result<()> {
    if root >= world {
        return Err(Error::arg(
            "root",
            format!("{op}: root {root} is not a rank of a world of {world}"),
        ));
    }
    Ok(())
}

/// Environment variables by which launchers announce the number of processes: OpenMPI's
/// `mpirun`, PMI (MPICH/Hydra, Slurm's `--mpi=pmi2`), and Slurm's `srun` (set for a job step
/// only, not in a batch script itself).
const WORLD_SIZE_VARS: [&str; 3] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"];

/// The number of processes the launcher started, if this process was started by one.
pub fn launched_world_size() -> Option<usize> {
    launched_world_size_from(|k| std::env::var(k).ok())
}

fn launched_world_size_from(get: impl Fn(&str) -> Option<String>) -> Option<usize> {
    WORLD_SIZE_VARS
        .iter()
        .find_map(|k| get(k)?.trim().parse().ok())
}

/// The communicator for this process: MPI when built with the `mpi` feature and started by
/// `mpirun`/`srun` (or any PMI launcher), otherwise [`SingleProcess`]. `timeout` bounds every
/// collective (`--dist-timeout`). A binary built without `mpi` but launched as one of several
/// processes is an error, not N independent runs writing to the same place.
pub fn communicator_from_env(timeout: Duration) -> Result<Box<dyn Communicator>> {
    let launched = launched_world_size();
    #[cfg(feature = "mpi")]
    if launched.is_some() || std::env::var_os("PMIX_RANK").is_some() {
        return Ok(Box::new(MpiCommunicator::init(timeout)?));
    }
    #[cfg(not(feature = "mpi"))]
    if let Some(n) = launched.filter(|&n| n > 1) {
        return Err(Error::Other(format!(
            "launched as one of {n} processes, but this medsam was built without MPI support; rebuild with `cargo build --release --features mpi`"
        )));
    }
    let _ = (launched, timeout);
    Ok(Box::new(SingleProcess))
}

/// The device a rank computes on: a bare `npu` means the rank's own device, `npu:<local rank>`
/// (the seed's one-process-per-NPU layout: 8 ranks per node use npu:0..7); anything else as given.
pub fn rank_device(device: &str, bootstrap: &dyn Communicator) -> String {
    if device == "npu" {
        format!("npu:{}", bootstrap.local_rank())
    } else {
        device.to_string()
    }
}

/// Runs `f` with the collective that carries gradients between ranks computing on `device`:
/// HCCL among the NPUs (bootstrapped through `bootstrap`, normally MPI) when several ranks train
/// on Ascend devices, otherwise `bootstrap` itself. Collective: every rank must call it.
pub fn with_device_collective<R>(
    bootstrap: &dyn Communicator,
    device: crate::Device,
    f: impl FnOnce(&dyn Communicator) -> Result<R>,
) -> Result<R> {
    #[cfg(feature = "ascend")]
    if let crate::Device::Npu(id) = device {
        if bootstrap.world_size() > 1 {
            let hccl = hccl::HcclCommunicator::init(bootstrap, id)?;
            return f(&hccl);
        }
    }
    let _ = device;
    f(bootstrap)
}

/// One process: every collective is the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleProcess;

impl Communicator for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn all_reduce_sum(&self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _buf: &mut [f32], _root: usize) -> Result<()> {
        Ok(())
    }
    fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(vec![bytes.to_vec()])
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}

/// PyTorch `DistributedSampler` semantics over an epoch order: pad to a multiple of the world
/// size by repeating from the start, then take every `world`-th index from `rank`.
pub fn shard(order: &[usize], rank: usize, world: usize) -> Vec<usize> {
    if order.is_empty() || world <= 1 {
        return order.to_vec();
    }
    let total = order.len().div_ceil(world) * world;
    let padded: Vec<usize> = order.iter().copied().cycle().take(total).collect();
    padded.into_iter().skip(rank).step_by(world).collect()
}

/// This rank's share of `items` dealt round-robin, for evaluation (no padding, unlike
/// [`shard`]).
pub fn rank_share<'a, T, C: Communicator + ?Sized>(items: &'a [T], comm: &C) -> Vec<&'a T> {
    items
        .iter()
        .skip(comm.rank())
        .step_by(comm.world_size())
        .collect()
}

/// [`Communicator::average_gradients`] through host memory.
pub fn average_gradients_on_host<C: Communicator + ?Sized>(
    comm: &C,
    grads: &mut [Tensor],
    bucket_bytes: usize,
) -> Result<()> {
    let mut host: Vec<Vec<f32>> = grads.iter().map(|g| g.to_vec()).collect::<Result<_>>()?;
    average_in_buckets(comm, &mut host, bucket_bytes)?;
    for (g, h) in grads.iter_mut().zip(host) {
        *g = Tensor::from_slice(&h, g.shape(), g.device())?;
    }
    Ok(())
}

/// Consecutive index ranges of `lens` whose sums stay within `cap` elements (a range always
/// holds at least one entry): DDP's gradient buckets, in parameter order.
pub fn bucket_ranges(lens: &[usize], cap: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < lens.len() {
        let (mut j, mut len) = (i, 0);
        while j < lens.len() && (j == i || len + lens[j] <= cap) {
            len += lens[j];
            j += 1;
        }
        out.push(i..j);
        i = j;
    }
    out
}

/// Averages gradients across ranks in buckets of at most `bucket_bytes`, in parameter order
/// (as DDP's reducer groups them).
pub fn average_in_buckets<C: Communicator + ?Sized>(
    comm: &C,
    grads: &mut [Vec<f32>],
    bucket_bytes: usize,
) -> Result<()> {
    if comm.world_size() <= 1 {
        return Ok(());
    }
    let lens: Vec<usize> = grads.iter().map(Vec::len).collect();
    for r in bucket_ranges(&lens, (bucket_bytes / 4).max(1)) {
        let mut flat: Vec<f32> = grads[r.clone()].concat();
        comm.all_reduce_mean(&mut flat)?;
        let mut off = 0;
        for g in &mut grads[r] {
            let n = g.len();
            g.copy_from_slice(&flat[off..off + n]);
            off += n;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launcher_env_is_recognised() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(launched_world_size_from(env(&[])), None);
        assert_eq!(
            launched_world_size_from(env(&[("OMPI_COMM_WORLD_SIZE", "4")])),
            Some(4)
        );
        assert_eq!(launched_world_size_from(env(&[("PMI_SIZE", "2")])), Some(2));
        assert_eq!(
            launched_world_size_from(env(&[("SLURM_STEP_NUM_TASKS", "16")])),
            Some(16)
        );
        assert_eq!(
            launched_world_size_from(env(&[("SLURM_NTASKS", "16")])),
            None,
            "a batch script alone is not a launch"
        );
    }

    #[test]
    fn single_process_passes_the_self_test() {
        selftest::run(&SingleProcess).unwrap();
    }

    #[test]
    fn default_broadcast_bytes_checks_root() {
        let mut b = vec![1u8, 2];
        assert!(SingleProcess.broadcast_bytes(&mut b, 1).is_err());
        SingleProcess.broadcast_bytes(&mut b, 0).unwrap();
        assert_eq!(b, [1, 2]);
    }
}
