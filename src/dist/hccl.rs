//! [`Communicator`] over HCCL for Ascend devices (feature `ascend`). The communicator is
//! bootstrapped through another communicator (normally MPI): rank 0's HCCL root info is sent
//! with [`Communicator::broadcast_bytes`], then every rank calls `HcclCommInitRootInfo`.
//!
//! Every collective runs on the NPU backend's compute stream, so a rank's collectives execute
//! in program order (as HCCL requires on every rank) and after the kernels producing their
//! inputs. Host slices are staged through device buffers of the NPU's caching allocator and
//! synchronised before the call returns (the trait's synchronous semantics); gradients already
//! on the device are averaged in place without a host round trip ([`Communicator::average_gradients`]).

use super::Communicator;
use crate::autograd::no_grad;
use crate::backend::ascend::{ascend_device, AscendBackend};
use crate::backend::Device;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use medsam_ffi::ascend::{self as acl, AscendError, HcclComm, ROOT_INFO_BYTES};
use std::sync::Mutex;

/// HCCL collectives among the ranks of the bootstrap communicator, one NPU per rank.
pub struct HcclCommunicator {
    comm: Mutex<HcclComm>,
    dev: acl::Device,
    /// The NPU backend whose compute stream carries every collective of this communicator.
    backend: std::sync::Arc<AscendBackend>,
    npu: u32,
    rank: usize,
    world: usize,
    local_rank: usize,
}

impl HcclCommunicator {
    /// Creates the HCCL communicator of `npu:device` for `bootstrap.rank()` of
    /// `bootstrap.world_size()`. Collective: every rank of `bootstrap` must call it.
    pub fn init(bootstrap: &dyn Communicator, device: u32) -> Result<Self> {
        let dev = ascend_device(device)?;
        let err = |e: AscendError| Error::Device {
            device: format!("npu:{device}"),
            detail: e.to_string(),
        };
        let (rank, world) = (bootstrap.rank(), bootstrap.world_size());
        let comm = HcclComm::init(&dev, rank as u32, world as u32, |bytes| {
            let mut v = if rank == 0 {
                bytes.to_vec()
            } else {
                Vec::new()
            };
            bootstrap
                .broadcast_bytes(&mut v, 0)
                .map_err(|e| e.to_string())?;
            if v.len() != ROOT_INFO_BYTES {
                return Err(format!(
                    "received {} root-info bytes, expected {ROOT_INFO_BYTES}",
                    v.len()
                ));
            }
            bytes.copy_from_slice(&v);
            Ok(())
        })
        .map_err(err)?;
        let backend = AscendBackend::shared(device)?;
        Ok(HcclCommunicator {
            comm: Mutex::new(comm),
            dev,
            backend,
            npu: device,
            rank,
            world,
            local_rank: bootstrap.local_rank(),
        })
    }

    /// The backend's compute stream: all collectives of a rank go through one stream in program
    /// order (HCCL needs the same order on every rank; two streams could run them interleaved
    /// differently on different ranks), after the kernels that produced their inputs.
    fn stream(&self) -> &acl::Stream {
        self.backend.stream()
    }

    fn err(&self) -> impl Fn(AscendError) -> Error + '_ {
        move |e| Error::Device {
            device: format!("npu:{}", self.npu),
            detail: e.to_string(),
        }
    }

    /// Host → device staging. The allocator is shared with the NPU backend, whose freed blocks
    /// may still be used by its queued work: drain the device before the synchronous copy.
    fn upload<T: acl::Element>(&self, host: &[T]) -> Result<acl::DeviceBuffer> {
        let e = self.err();
        self.dev.synchronize().map_err(&e)?;
        self.dev.upload(host).map_err(&e)
    }

    fn comm(&self) -> std::sync::MutexGuard<'_, HcclComm> {
        self.comm.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Communicator for HcclCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn local_rank(&self) -> usize {
        self.local_rank
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let e = self.err();
        let d = self.upload(buf)?;
        self.comm()
            .all_reduce_sum_inplace::<f32>(&d, buf.len(), self.stream())
            .map_err(&e)?;
        self.stream().synchronize().map_err(&e)?;
        d.copy_to_host(buf).map_err(&e)
    }

    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()> {
        super::check_root("broadcast", root, self.world)?;
        if buf.is_empty() {
            return Ok(());
        }
        let e = self.err();
        let mut d = self.upload(buf)?;
        self.comm()
            .broadcast::<f32>(&mut d, buf.len(), root as u32, self.stream())
            .map_err(&e)?;
        self.stream().synchronize().map_err(&e)?;
        d.copy_to_host(buf).map_err(&e)
    }

    fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        // Lengths first (i64), then the bytes packed into i32 words padded to the longest.
        let e = self.err();
        let world = self.world;
        let comm = self.comm();
        let len = self.upload(&[bytes.len() as i64])?;
        let mut lens_d = self.dev.alloc_elems::<i64>(world).map_err(&e)?;
        comm.all_gather::<i64>(&len, &mut lens_d, 1, self.stream())
            .map_err(&e)?;
        let lens: Vec<i64> = lens_d.read(self.stream(), world).map_err(&e)?;
        let words = (lens.iter().copied().max().unwrap_or(0).max(0) as usize).div_ceil(4);
        if words == 0 {
            return Ok(vec![Vec::new(); world]);
        }
        let mut mine = vec![0i32; words];
        for (i, c) in bytes.chunks(4).enumerate() {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            mine[i] = i32::from_le_bytes(w);
        }
        let send = self.upload(&mine)?;
        let mut recv = self.dev.alloc_elems::<i32>(words * world).map_err(&e)?;
        comm.all_gather::<i32>(&send, &mut recv, words, self.stream())
            .map_err(&e)?;
        let all: Vec<i32> = recv.read(self.stream(), words * world).map_err(&e)?;
        Ok((0..world)
            .map(|r| {
                let b: Vec<u8> = all[r * words..(r + 1) * words]
                    .iter()
                    .flat_map(|w| w.to_le_bytes())
                    .collect();
                b[..lens[r] as usize].to_vec()
            })
            .collect())
    }

    /// Gradients on this communicator's NPU are reduced where they live: each bucket is
    /// concatenated on the device, summed by `HcclAllReduce` in place on the backend's compute
    /// stream (ordered after the backward kernels, no host round trip), scaled by 1/world and
    /// split back. Gradients elsewhere take the host path.
    fn average_gradients(&self, grads: &mut [Tensor], bucket_bytes: usize) -> Result<()> {
        let here = Device::Npu(self.npu);
        if grads.iter().any(|g| g.device() != here) {
            return super::average_gradients_on_host(self, grads, bucket_bytes);
        }
        let lens: Vec<usize> = grads.iter().map(Tensor::numel).collect();
        let inv_world = 1.0 / self.world as f32;
        no_grad(|| {
            for r in super::bucket_ranges(&lens, (bucket_bytes / 4).max(1)) {
                let parts = grads[r.clone()]
                    .iter()
                    .map(|g| g.reshape(&[g.numel()]))
                    .collect::<Result<Vec<_>>>()?;
                let flat = Tensor::cat(&parts, 0)?.contiguous()?;
                let n = flat.numel();
                self.backend.with_device_buffer(&flat, |buf, stream| {
                    self.comm().all_reduce_sum_inplace::<f32>(buf, n, stream)
                })?;
                let flat = flat.scale(inv_world)?;
                let mut off = 0;
                for g in &mut grads[r] {
                    let n = g.numel();
                    *g = flat.narrow(0, off, n)?.reshape(g.shape())?.contiguous()?;
                    off += n;
                }
            }
            Ok(())
        })
    }

    fn barrier(&self) -> Result<()> {
        let e = self.err();
        self.comm().barrier(self.stream()).map_err(&e)?;
        self.stream().synchronize().map_err(&e)
    }
}
