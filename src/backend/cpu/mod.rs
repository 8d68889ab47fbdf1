//! The CPU backend: host vectors, computed by the fast kernels of `medsam-kernels`.

mod attention;
mod conv;
mod linalg;
mod memory;
mod norm;
mod optim;
mod pointwise;

use super::*;
use medsam_kernels::strided::StridedView;
use medsam_kernels::{activation, batchnorm, depthwise, gemm, resize};
use rayon::prelude::*;
use std::sync::OnceLock;

/// Stateless; one shared instance.
#[derive(Debug, Default)]
pub struct CpuBackend;

impl CpuBackend {
    pub fn shared() -> Arc<dyn Backend> {
        static CPU: OnceLock<Arc<dyn Backend>> = OnceLock::new();
        CPU.get_or_init(|| Arc::new(CpuBackend)).clone()
    }
}

fn host(s: &Storage) -> Result<&[f32]> {
    s.cpu()
}

/// The host slice of a CPU buffer for writing; a mapped (read-only) buffer is first replaced by
/// an owned copy, so the file is never written.
fn host_mut(s: &mut Storage) -> Result<&mut [f32]> {
    match s {
        Storage::Cpu(v) => Ok(v),
        Storage::Mapped(m) => {
            let owned = m.to_vec();
            *s = Storage::Cpu(owned);
            host_mut(s)
        }
        Storage::Device(_) => Err(Error::Other(
            "expected a CPU buffer, found a device buffer".into(),
        )),
    }
}

/// Below this many elements a pointwise loop is not worth splitting across threads.
const PAR_MIN: usize = 1 << 15;

fn map_into(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = buffer(x.len());
    if x.len() < PAR_MIN {
        out.iter_mut().zip(x).for_each(|(o, &v)| *o = f(v));
    } else {
        out.par_chunks_mut(PAR_MIN / 4)
            .zip(x.par_chunks(PAR_MIN / 4))
            .for_each(|(o, x)| o.iter_mut().zip(x).for_each(|(o, &v)| *o = f(v)));
    }
    out
}

fn zip_into(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    let n = a.len().min(b.len());
    let mut out = buffer(n);
    let run = |o: &mut [f32], a: &[f32], b: &[f32]| {
        o.iter_mut()
            .zip(a)
            .zip(b)
            .for_each(|((o, &x), &y)| *o = f(x, y))
    };
    if n < PAR_MIN {
        run(&mut out, a, b);
    } else {
        out.par_chunks_mut(PAR_MIN / 4)
            .zip(a[..n].par_chunks(PAR_MIN / 4))
            .zip(b[..n].par_chunks(PAR_MIN / 4))
            .for_each(|((o, a), b)| run(o, a, b));
    }
    out
}

/// A cache of large host buffers: every op allocates a fresh output, and for big tensors a fresh
/// allocation means `mmap` + a page fault and a zeroed page per 4 KiB, then `munmap` on drop.
/// Dropped tensors hand their buffers back here ([`recycle`]) and op outputs that are fully
/// overwritten take them ([`buffer`]), so a forward pass reuses the memory of the previous one.
mod pool {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// Smaller buffers are served well by malloc's own free lists.
    const MIN_LEN: usize = 1 << 15;
    /// Spare buffers kept of any one capacity: more than a forward pass has free at once.
    /// Tensors made outside the cache (uploads, zero-filled or collected results) come back
    /// here too; past a few spares of one size they are surplus that would grow the cache on
    /// every call up to the bound (LiteMedSAM: +10 MB per image) and push out buffers in use.
    const MAX_SAME_SIZE: usize = 8;
    /// Upper bound on the memory kept (bytes of capacity); the oldest buffers are dropped first.
    static MAX_BYTES: AtomicUsize = AtomicUsize::new(512 << 20);

    #[derive(Default)]
    pub(super) struct Pool {
        bufs: Vec<Vec<f32>>,
        bytes: usize,
    }

    static POOL: Mutex<Pool> = Mutex::new(Pool {
        bufs: Vec::new(),
        bytes: 0,
    });

    impl Pool {
        /// A kept buffer that holds `len` elements, if any (see [`take`]).
        pub(super) fn take(&mut self, len: usize) -> Option<Vec<f32>> {
            if len < MIN_LEN {
                return None;
            }
            // Best fit by capacity among the buffers that hold `len` elements without wasting
            // over half. Capacity, not length: a buffer that once served a smaller request comes
            // back truncated, and must still serve its full size next time (else every forward
            // pass re-faults its largest buffers). Buffers already long enough win ties, as
            // they need no fill.
            let key = |b: &Vec<f32>| (b.capacity(), b.len() < len);
            let fits = |b: &Vec<f32>| b.capacity() >= len && b.capacity() <= 2 * len;
            let (i, _) = (self.bufs.iter().enumerate())
                .filter(|(_, b)| fits(b))
                .min_by_key(|(_, b)| key(b))?;
            Some(self.remove(i))
        }

        /// The largest kept buffer too small for `len` elements, to be grown in place when
        /// nothing fits: growing a large buffer keeps its pages (`mremap`), so only the added
        /// pages are faulted in, where a fresh buffer would fault in all of them. (The smaller
        /// size it served may miss later, faulting no more than was saved now.)
        pub(super) fn take_to_grow(&mut self, len: usize) -> Option<Vec<f32>> {
            let (i, _) = (self.bufs.iter().enumerate())
                .filter(|(_, b)| b.capacity() < len)
                .max_by_key(|(_, b)| b.capacity())?;
            Some(self.remove(i))
        }

        /// A buffer that fits `len` elements, else the one to grow to it ([`take`]).
        pub(super) fn take_or_grow(&mut self, len: usize) -> Option<Vec<f32>> {
            self.take(len).or_else(|| self.take_to_grow(len))
        }

        fn remove(&mut self, i: usize) -> Vec<f32> {
            let v = self.bufs.remove(i);
            self.bytes -= v.capacity() * 4;
            v
        }

        /// Keeps `v` under the bound `max` (bytes); returns what is to be freed (outside the
        /// lock): `v` itself if it is small, too large or one spare too many of its size, else
        /// the oldest buffers it pushes out.
        pub(super) fn recycle(&mut self, v: Vec<f32>, max: usize) -> Vec<Vec<f32>> {
            let bytes = v.capacity() * 4;
            let same = self.bufs.iter().filter(|b| b.capacity() == v.capacity());
            if v.len() < MIN_LEN || bytes > max || same.count() >= MAX_SAME_SIZE {
                return vec![v];
            }
            let mut evicted = Vec::new();
            while self.bytes + bytes > max && !self.bufs.is_empty() {
                let old = self.bufs.remove(0);
                self.bytes -= old.capacity() * 4;
                evicted.push(old);
            }
            self.bytes += bytes;
            self.bufs.push(v);
            evicted
        }

        /// Drops the oldest buffers until at most `max` bytes are kept; returns them.
        fn shrink_to(&mut self, max: usize) -> Vec<Vec<f32>> {
            let mut evicted = Vec::new();
            while self.bytes > max && !self.bufs.is_empty() {
                let b = self.bufs.remove(0);
                self.bytes -= b.capacity() * 4;
                evicted.push(b);
            }
            evicted
        }
    }

    /// A buffer of `len` elements with unspecified (initialised) contents.
    pub(super) fn take(len: usize) -> Vec<f32> {
        if len < MIN_LEN {
            return vec![0.0; len];
        }
        let kept = POOL.lock().ok().and_then(|mut p| p.take_or_grow(len));
        sized(kept, len) // outside the lock: growing faults in pages
    }

    /// `kept` made `len` long, or a fresh buffer if there is none.
    fn sized(kept: Option<Vec<f32>>, len: usize) -> Vec<f32> {
        match kept {
            Some(mut v) => {
                // Exact growth (`resize` alone may double the capacity); then shrinks, or
                // fills the gap (new pages are faulted in here rather than by the op).
                v.reserve_exact(len.saturating_sub(v.len()));
                v.resize(len, 0.0);
                v
            }
            None => vec![0.0; len],
        }
    }

    /// A kept buffer that holds `len` elements (length unspecified), if there is one.
    pub(super) fn take_kept(len: usize) -> Option<Vec<f32>> {
        POOL.lock().ok().and_then(|mut p| p.take(len))
    }

    pub(super) fn recycle(v: Vec<f32>) {
        let max = MAX_BYTES.load(Ordering::Relaxed);
        let freed = match POOL.lock() {
            Ok(mut p) => p.recycle(v, max),
            Err(_) => vec![v],
        };
        drop(freed); // outside the lock
    }

    /// Sets the bound and drops the oldest buffers over it; returns the previous bound.
    pub(super) fn set_limit(bytes: usize) -> usize {
        let old = MAX_BYTES.swap(bytes, Ordering::Relaxed);
        let freed = POOL.lock().map(|mut p| p.shrink_to(bytes));
        drop(freed);
        old
    }

    pub(super) fn clear() {
        let freed = POOL.lock().map(|mut p| p.shrink_to(0));
        drop(freed);
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn buf(len: usize) -> Vec<f32> {
            vec![1.0; len]
        }

        /// Surplus buffers of one size (made outside the cache, then dropped) stop at
        /// MAX_SAME_SIZE; other sizes are still kept, and takes are served best-fit.
        #[test]
        fn spares_of_one_size_are_capped() {
            let mut p = Pool::default();
            let max = 1 << 30;
            for _ in 0..3 * MAX_SAME_SIZE {
                drop(p.recycle(buf(MIN_LEN), max));
            }
            assert_eq!(p.bufs.len(), MAX_SAME_SIZE);
            assert_eq!(p.bytes, MAX_SAME_SIZE * MIN_LEN * 4);
            assert_eq!(p.recycle(buf(2 * MIN_LEN), max).len(), 0);
            assert_eq!(p.take(2 * MIN_LEN).map(|v| v.capacity()), Some(2 * MIN_LEN));
            assert_eq!(
                p.take(MIN_LEN + 1),
                None,
                "no kept buffer holds MIN_LEN + 1"
            );
            assert_eq!(p.take(MIN_LEN).map(|v| v.capacity()), Some(MIN_LEN));
            assert_eq!(p.bufs.len(), MAX_SAME_SIZE - 1);
        }

        /// With nothing that fits, the largest buffer smaller than the request is the one given
        /// to grow (it keeps its pages); a buffer that fits is still preferred.
        #[test]
        fn a_miss_grows_the_largest_smaller_buffer() {
            let mut p = Pool::default();
            let max = 1 << 30;
            for len in [MIN_LEN, 4 * MIN_LEN, 2 * MIN_LEN] {
                drop(p.recycle(buf(len), max));
            }
            assert_eq!(p.take(16 * MIN_LEN), None, "nothing holds 16·MIN_LEN");
            let grown = p.take_to_grow(16 * MIN_LEN).map(|v| v.capacity());
            assert_eq!(grown, Some(4 * MIN_LEN));
            assert_eq!(p.bytes, 3 * MIN_LEN * 4);
            assert_eq!(
                p.take_to_grow(MIN_LEN),
                None,
                "none is smaller than MIN_LEN"
            );
            let mut v = sized(p.take_or_grow(3 * MIN_LEN), 3 * MIN_LEN);
            assert_eq!(v.len(), 3 * MIN_LEN);
            assert_eq!(v.capacity(), 3 * MIN_LEN, "grown exactly, not doubled");
            v.fill(2.0);
            assert_eq!(p.bufs.len(), 1);
        }

        /// The byte bound evicts the oldest; small buffers are never kept.
        #[test]
        fn bound_evicts_oldest_and_small_buffers_are_not_kept() {
            let mut p = Pool::default();
            let max = 3 * MIN_LEN * 4;
            for len in [MIN_LEN, MIN_LEN + 16, MIN_LEN + 32, MIN_LEN + 48] {
                drop(p.recycle(buf(len), max));
            }
            let caps: Vec<usize> = p.bufs.iter().map(|b| b.capacity()).collect();
            assert_eq!(caps, [MIN_LEN + 32, MIN_LEN + 48]);
            assert_eq!(p.recycle(buf(16), max).len(), 1);
            assert_eq!(p.shrink_to(0).len(), 2);
            assert_eq!(p.bytes, 0);
        }
    }
}

/// An output buffer of `len` elements whose contents are unspecified: only for results that
/// are overwritten in full.
pub(crate) fn buffer(len: usize) -> Vec<f32> {
    pool::take(len)
}

/// A zero-filled buffer of `len` elements from the cache (what `zeroed(len)` gives, without
/// a fresh allocation's page faults, and without growing the cache when it is dropped).
/// A miss is a fresh zeroed allocation, whose pages are only mapped when first written: a
/// zero tensor that is never written (the placeholders a checkpoint replaces) costs nothing.
pub(crate) fn zeroed(len: usize) -> Vec<f32> {
    match pool::take_kept(len) {
        Some(mut v) => {
            v.clear();
            v.resize(len, 0.0);
            v
        }
        None => vec![0.0; len],
    }
}

/// Gives a host buffer that is no longer referenced back to the cache (called when the last
/// tensor holding it is dropped).
pub(crate) fn recycle(v: Vec<f32>) {
    pool::recycle(v)
}

/// Frees the host buffers kept for reuse (up to 512 MiB after a large forward pass).
pub fn release_cached_buffers() {
    pool::clear()
}

/// Bounds the memory of the host buffers kept for reuse (default 512 MiB), freeing the oldest
/// over it; returns the previous bound. A smaller bound lowers peak memory at the cost of
/// fresh allocations (page faults) for the buffers that no longer fit.
pub fn set_cached_buffer_limit(bytes: usize) -> usize {
    pool::set_limit(bytes)
}

/// Runs `f` on a thread of the compute pool (rayon's global pool) and returns its result. From
/// any other thread each parallel op is handed to the pool as a new job while the caller sleeps
/// on it, a pair of context switches per op (MedSAM2's encoder: ~1,200 per image); from inside
/// the pool the op's halves are shared by work stealing instead (~220 per image, the encoder
/// 5–10 % faster on 2 threads). Results are the same either way. Only for a caller that is
/// alone in the process: a pool thread waiting on an op runs other queued jobs meanwhile, so two
/// callers sharing a lock could each end up waiting on the other.
pub fn on_compute_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// A [`View`] as the kernels take it.
fn strided(v: &View) -> StridedView<'_> {
    StridedView {
        shape: &v.shape,
        strides: &v.strides,
        offset: v.offset,
    }
}

/// Copies a strided view into a dense row-major buffer.
fn gather(src: &[f32], view: &View) -> Vec<f32> {
    let mut out = buffer(view.shape.iter().product());
    medsam_kernels::strided::gather(src, strided(view), &mut out);
    out
}

/// `out = a ∘ b` over broadcast views, without materialising the operands.
fn broadcast_zip<F>(a: &[f32], va: &View, b: &[f32], vb: &View, f: F) -> Vec<f32>
where
    F: Fn(f32, f32) -> f32 + Sync,
{
    let mut out = buffer(va.shape.iter().product());
    medsam_kernels::strided::zip_broadcast(a, strided(va), b, strided(vb), f, &mut out);
    out
}

/// `a ∘ b` for one operator: a flat loop when both operands are dense and the same size,
/// otherwise through the broadcast views.
fn zip_views<F>(a: &[f32], va: &View, b: &[f32], vb: &View, f: F) -> Vec<f32>
where
    F: Fn(f32, f32) -> f32 + Sync,
{
    let dense = |v: &View, len: usize| {
        v.offset == 0 && is_contiguous(v) && len == v.shape.iter().product::<usize>()
    };
    if dense(va, a.len()) && dense(vb, b.len()) {
        zip_into(a, b, f)
    } else {
        broadcast_zip(a, va, b, vb, f)
    }
}

impl Backend for CpuBackend {
    fn device(&self) -> Device {
        Device::Cpu
    }
}

/// The kernels' backward signatures for the input and the weight (+ bias) of a convolution.
type ConvInputGrad = fn(Conv2dGeom, &[f32], &[f32], &mut [f32]);
type ConvWeightGrad = fn(Conv2dGeom, &[f32], &[f32], &mut [f32], Option<&mut [f32]>);

/// dx, dw and (optionally) dbias of a convolution through its two backward kernels.
fn conv_grads(
    g: Conv2dGeom,
    (x, w, dy): (&Storage, &Storage, &Storage),
    bias: bool,
    input_grad: ConvInputGrad,
    weight_grad: ConvWeightGrad,
) -> Result<ConvGrads> {
    let (x, w, dy) = (host(x)?, host(w)?, host(dy)?);
    let mut dx = zeroed(x.len());
    let mut dw = zeroed(w.len());
    let mut db = bias.then(|| zeroed(g.c_out));
    input_grad(g, w, dy, &mut dx);
    weight_grad(g, x, dy, &mut dw, db.as_deref_mut());
    Ok(ConvGrads {
        dx: Storage::Cpu(dx),
        dw: Storage::Cpu(dw),
        dbias: db.map(Storage::Cpu),
    })
}

fn is_contiguous(v: &View) -> bool {
    let mut expect = 1;
    for d in (0..v.shape.len()).rev() {
        if v.shape[d] != 1 && v.strides[d] != expect {
            return false;
        }
        expect *= v.shape[d];
    }
    true
}

#[cfg(test)]
mod tests {
    use rayon::prelude::*;

    /// The closure runs on one of the pool's threads (a test thread is not one) and its result
    /// comes back.
    #[test]
    fn on_compute_pool_runs_on_a_pool_thread() {
        assert_eq!(rayon::current_thread_index(), None);
        let (index, sum) = super::on_compute_pool(|| {
            let sum: u64 = (1..=100u64).into_par_iter().sum();
            (rayon::current_thread_index(), sum)
        });
        assert!(index.is_some(), "ran outside the pool");
        assert_eq!(sum, 5050);
    }
}
