//! Host f32 buffers that are either owned or a read-only window into a memory-mapped file: model
//! weights loaded from a checkpoint are used in place, straight out of the file's page cache,
//! instead of being copied into fresh memory (no page zeroing, no second copy of the weights).
//!
//! A mapped buffer is never written: whatever needs to write one (the optimizer updating a
//! parameter in place) takes an owned copy first ([`crate::backend::Storage::Mapped`] turns into
//! [`crate::backend::Storage::Cpu`]). The mapping is private and read-only; it lives as long as
//! the last tensor that uses it. Like `torch.load(mmap=True)`, a process whose checkpoint file is
//! truncated or rewritten in place while its weights are mapped can crash (SIGBUS) or see the new
//! bytes: replace checkpoints by renaming a new file over the old one (what `save_pth` does), or
//! set `MEDSAM_NO_MMAP=1` to read checkpoints into owned memory instead.

use memmap2::Mmap;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// `MEDSAM_NO_MMAP=1` (or any value but `0` and empty): checkpoints are read, never memory-mapped.
pub fn mmap_disabled() -> bool {
    std::env::var_os("MEDSAM_NO_MMAP").is_some_and(|v| !v.is_empty() && v != "0")
}

/// `len` little-endian f32s at byte `offset` of a shared read-only file mapping.
#[derive(Clone)]
pub struct MappedF32 {
    map: Arc<Mmap>,
    offset: usize,
    len: usize,
}

impl MappedF32 {
    /// The window of `len` f32s at byte `offset` of `map`; `None` when it is out of bounds, not
    /// 4-byte aligned, or the host is not little-endian (the caller then copies).
    pub fn new(map: Arc<Mmap>, offset: usize, len: usize) -> Option<MappedF32> {
        let end = len.checked_mul(4).and_then(|n| n.checked_add(offset))?;
        let aligned = (map.as_ptr() as usize).wrapping_add(offset) % std::mem::align_of::<f32>();
        (cfg!(target_endian = "little") && end <= map.len() && aligned == 0).then_some(MappedF32 {
            map,
            offset,
            len,
        })
    }
}

impl Deref for MappedF32 {
    type Target = [f32];
    #[inline]
    fn deref(&self) -> &[f32] {
        // SAFETY: `new` checked that `offset .. offset + 4 len` lies inside the mapping and is
        // f32-aligned; every bit pattern is an f32 (little-endian host, so the stored values);
        // the mapping is read-only and kept alive by `self.map`.
        unsafe {
            std::slice::from_raw_parts(self.map.as_ptr().add(self.offset).cast::<f32>(), self.len)
        }
    }
}

impl fmt::Debug for MappedF32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MappedF32[{} at byte {}]", self.len, self.offset)
    }
}

/// A host f32 buffer: owned, or mapped from a file (read-only).
#[derive(Clone)]
pub enum HostBuf {
    Owned(Vec<f32>),
    Mapped(MappedF32),
}

impl HostBuf {
    /// Whether the values are read in place from a file mapping.
    pub fn is_mapped(&self) -> bool {
        matches!(self, HostBuf::Mapped(_))
    }

    /// The owned vector, for writing: a mapped buffer is first replaced by a copy of its values
    /// (the file is never written).
    pub fn to_mut(&mut self) -> &mut Vec<f32> {
        match self {
            HostBuf::Owned(v) => v,
            HostBuf::Mapped(m) => {
                let owned = m.to_vec();
                *self = HostBuf::Owned(owned);
                self.to_mut()
            }
        }
    }

    /// The values as an owned vector (a copy when mapped).
    pub fn into_vec(self) -> Vec<f32> {
        match self {
            HostBuf::Owned(v) => v,
            HostBuf::Mapped(m) => m.to_vec(),
        }
    }
}

impl Default for HostBuf {
    fn default() -> Self {
        HostBuf::Owned(Vec::new())
    }
}

impl From<Vec<f32>> for HostBuf {
    fn from(v: Vec<f32>) -> Self {
        HostBuf::Owned(v)
    }
}

impl Deref for HostBuf {
    type Target = [f32];
    #[inline]
    fn deref(&self) -> &[f32] {
        match self {
            HostBuf::Owned(v) => v,
            HostBuf::Mapped(m) => m,
        }
    }
}

impl PartialEq for HostBuf {
    /// Equal values (compared as f32s, like `Vec<f32>`), wherever they live.
    fn eq(&self, o: &Self) -> bool {
        **self == **o
    }
}

impl fmt::Debug for HostBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostBuf::Owned(v) => f.debug_tuple("Owned").field(v).finish(),
            HostBuf::Mapped(m) => m.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{AdamWSlots, AdamWStep, OptimOps, Storage};

    /// A file of `vals` (little-endian) after `prefix` bytes, mapped.
    fn mapped_file(name: &str, prefix: usize, vals: &[f32]) -> (std::path::PathBuf, Arc<Mmap>) {
        let path = std::env::temp_dir().join(format!("medsam-host-{name}-{}", std::process::id()));
        let mut bytes = vec![0xAB; prefix];
        bytes.extend(vals.iter().flat_map(|v| v.to_le_bytes()));
        std::fs::write(&path, &bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: a private test file, not changed while mapped.
        let map = unsafe { Mmap::map(&file) }.unwrap();
        (path, Arc::new(map))
    }

    #[test]
    fn windows_are_checked_for_bounds_and_alignment() {
        let vals: Vec<f32> = (0..10).map(|i| i as f32 * 1.5).collect();
        let (path, map) = mapped_file("window", 2, &vals);
        // The values start at byte 2: not f32-aligned.
        assert!(MappedF32::new(map.clone(), 2, 10).is_none());
        // Aligned windows inside the file read its bytes; past the end is refused.
        let w = MappedF32::new(map.clone(), 4, 9).unwrap();
        let want: Vec<f32> = (0..9)
            .map(|i| f32::from_le_bytes(map[4 + 4 * i..8 + 4 * i].try_into().unwrap()))
            .collect();
        assert_eq!(&w[..], &want[..]);
        assert!(MappedF32::new(map.clone(), 4, 10).is_none());
        assert!(MappedF32::new(map.clone(), usize::MAX - 3, 1).is_none());
        assert!(MappedF32::new(map, 0, usize::MAX / 2).is_none());
        let _ = std::fs::remove_file(path);
    }

    /// Writing a mapped buffer (an optimizer step) first replaces it by an owned copy: the
    /// update equals the one on an owned buffer and the file keeps its bytes.
    #[test]
    fn writes_go_to_an_owned_copy_never_to_the_file() {
        let vals: Vec<f32> = (0..8).map(|i| (i as f32 - 4.0) * 0.25).collect();
        let (path, map) = mapped_file("cow", 4, &vals);
        let file_before = std::fs::read(&path).unwrap();
        let window = MappedF32::new(map.clone(), 4, 8).unwrap();
        let start: Vec<f32> = window.to_vec();
        assert_eq!(start, vals);
        let mut buf = HostBuf::Mapped(window.clone());
        buf.to_mut()[0] = 42.0;
        assert!(!buf.is_mapped());
        assert_eq!(buf[0], 42.0);
        assert_eq!(&window[..], &start[..]);

        let step = AdamWStep {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            step: 1,
        };
        let grad = Storage::Cpu(vec![0.5; 8]);
        let update = |mut param: Storage| {
            let (mut m, mut v) = (Storage::Cpu(vec![0.0; 8]), Storage::Cpu(vec![0.0; 8]));
            let slots = AdamWSlots {
                param: &mut param,
                exp_avg: &mut m,
                exp_avg_sq: &mut v,
            };
            crate::backend::cpu::CpuBackend
                .adamw(step, &grad, slots)
                .unwrap();
            param
        };
        let stepped = update(Storage::Mapped(window.clone()));
        let reference = update(Storage::Cpu(start.clone()));
        assert!(!stepped.is_mapped());
        assert_eq!(stepped.cpu().unwrap(), reference.cpu().unwrap());
        assert_ne!(stepped.cpu().unwrap(), &start[..]);
        assert_eq!(&window[..], &start[..]);
        drop((window, map));
        assert_eq!(std::fs::read(&path).unwrap(), file_before);
        let _ = std::fs::remove_file(path);
    }
}
