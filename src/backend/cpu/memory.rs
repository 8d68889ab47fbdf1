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

    /// One buffer, each part copied into its place (the default writes every part into a
    /// buffer of the whole output's size and adds them up).
    fn concat(
        &self,
        parts: &[(&Storage, &View)],
        dim: usize,
        out_shape: &[usize],
    ) -> Result<Storage> {
        let inner: usize = out_shape[dim + 1..].iter().product();
        let outer: usize = out_shape[..dim].iter().product();
        let row = out_shape[dim] * inner; // output values per outer index
                                          // Each part as a dense block: read in place where it is one, else gathered.
        let dense: Vec<std::borrow::Cow<[f32]>> = parts
            .iter()
            .map(|&(s, v)| {
                let (src, len) = (host(s)?, v.shape.iter().product::<usize>());
                Ok(if is_contiguous(v) {
                    std::borrow::Cow::Borrowed(&src[v.offset..v.offset + len])
                } else {
                    std::borrow::Cow::Owned(gather(src, v))
                })
            })
            .collect::<Result<_>>()?;
        let mut out = super::buffer(outer * row);
        let fill_row = |(o, dst): (usize, &mut [f32])| {
            let mut at = 0;
            for (part, &(_, v)) in dense.iter().zip(parts) {
                let block = v.shape[dim] * inner;
                dst[at..at + block].copy_from_slice(&part[o * block..(o + 1) * block]);
                at += block;
            }
        };
        if row == 0 {
            // Nothing to copy (and no rows to split the output into).
        } else if outer * row < PAR_MIN {
            out.chunks_mut(row).enumerate().for_each(fill_row);
        } else {
            out.par_chunks_mut(row).enumerate().for_each(fill_row);
        }
        Ok(Storage::Cpu(out))
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
