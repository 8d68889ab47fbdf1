//! The collective layer for data-parallel training and sharded evaluation. One interface
//! ([`Communicator`]); implementations: a single process (no-op), MPI for CPU processes (feature
//! `mpi`), and HCCL for Ascend devices (feature `ascend`, bootstrapped through MPI).

use crate::error::Result;

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

    fn is_root(&self) -> bool {
        self.rank() == 0
    }
    /// Element-wise mean across ranks, in place.
    fn all_reduce_mean(&self, buf: &mut [f32]) -> Result<()> {
        self.all_reduce_sum(buf)?;
        let n = self.world_size() as f32;
        buf.iter_mut().for_each(|x| *x /= n);
        Ok(())
    }
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

/// Averages gradients across ranks in buckets of at most `bucket_bytes`, in parameter order
/// (as DDP's reducer groups them).
pub fn average_in_buckets(
    comm: &dyn Communicator,
    grads: &mut [Vec<f32>],
    bucket_bytes: usize,
) -> Result<()> {
    if comm.world_size() <= 1 {
        return Ok(());
    }
    let cap = (bucket_bytes / 4).max(1);
    let mut i = 0;
    while i < grads.len() {
        let mut j = i;
        let mut len = 0;
        while j < grads.len() && (j == i || len + grads[j].len() <= cap) {
            len += grads[j].len();
            j += 1;
        }
        let mut flat: Vec<f32> = grads[i..j].concat();
        comm.all_reduce_mean(&mut flat)?;
        let mut off = 0;
        for g in &mut grads[i..j] {
            let n = g.len();
            g.copy_from_slice(&flat[off..off + n]);
            off += n;
        }
        i = j;
    }
    Ok(())
}
