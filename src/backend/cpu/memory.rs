//! CPU backend: buffers: upload, download, fill, and strided copies in and out of views.

use super::*;

impl MemoryOps for CpuBackend {
    // New buffers come from the recycling cache (`super::buffer`) like every op output: a fresh
    // allocation of a large tensor page-faults every 4 KiB, and once dropped it would join the
    // cache without ever being taken from it (so the cache grew by every such tensor's size on
    // each forward pass, e.g. TinyViT's per-call attention bias tables).
    fn upload(&self, host: &[f32]) -> Result<Storage> {
        let mut out = super::buffer(host.len());
        out.copy_from_slice(host);
        Ok(Storage::Cpu(out))
    }

    fn download(&self, s: &Storage) -> Result<Vec<f32>> {
        Ok(host(s)?.to_vec())
    }

    fn zeros(&self, len: usize) -> Result<Storage> {
        Ok(Storage::Cpu(super::zeroed(len)))
    }

    fn fill(&self, len: usize, value: f32) -> Result<Storage> {
        if value.to_bits() == 0 {
            return self.zeros(len);
        }
        let mut out = super::buffer(len);
        out.fill(value);
        Ok(Storage::Cpu(out))
    }

    fn materialize(&self, s: &Storage, view: &View) -> Result<Storage> {
        Ok(Storage::Cpu(gather(host(s)?, view)))
    }

    fn scatter_into_zeros(&self, src: &Storage, view: &View, len: usize) -> Result<Storage> {
        // A recycled buffer zeroed in place: a fresh zeroed allocation page-faults every 4 KiB
        // (pad_end in every windowed block).
        let mut out = super::buffer(len);
        out.fill(0.0);
        medsam_kernels::strided::scatter_add(host(src)?, strided(view), &mut out);
        Ok(Storage::Cpu(out))
    }

    fn gather_rows(&self, a: crate::backend::ops::memory::GatherIn) -> Result<Storage> {
        self.gather_rows_host(a)
    }
}

// ------------------------------------------------------------------ row gathers

use crate::backend::ops::memory::{GatherIn, RowTable};

impl CpuBackend {
    /// The rows of a table, `[rows, width]`.
    fn table_rows<'a>(t: &RowTable<'a>, width: usize) -> Result<&'a [f32]> {
        let s = host(t.storage)?;
        let end = t.offset + t.rows * width;
        s.get(t.offset..end).ok_or_else(|| Error::Shape {
            op: "gather_rows",
            detail: format!(
                "{} rows of {width} from {} in a buffer of {}",
                t.rows,
                t.offset,
                s.len()
            ),
        })
    }

    pub(super) fn gather_rows_host(&self, a: GatherIn) -> Result<Storage> {
        let width = a.pick.width;
        let parts = a
            .parts
            .iter()
            .map(|t| Self::table_rows(t, width))
            .collect::<Result<Vec<_>>>()?;
        let fill = a
            .fill
            .as_ref()
            .map(|t| Self::table_rows(t, width))
            .transpose()?;
        let mut out = super::buffer(a.pick.out_len(a.index.len()));
        medsam_kernels::window::gather_rows(&parts, fill, a.index, a.pick, &mut out);
        Ok(Storage::Cpu(out))
    }
}
