//! Ascend backend: buffers: upload, download, fill, and strided copies in and out of views.

use super::*;

impl MemoryOps for AscendBackend {
    fn upload(&self, host: &[f32]) -> Result<Storage> {
        // A cached block may still be used by queued work: drain the device first, and keep
        // buffers from being returned to the cache until the copy is done.
        let g = self.host_copy.lock().unwrap_or_else(|e| e.into_inner());
        self.dev.synchronize().map_err(self.err())?;
        let b = self.dev.upload(host).map_err(self.err())?;
        drop(g);
        Ok(self.wrap(b, host.len()))
    }

    fn download(&self, s: &Storage) -> Result<Vec<f32>> {
        if let Ok(v) = s.cpu() {
            return Ok(v.to_vec());
        }
        let b = self.buf(s)?;
        b.read::<f32>(&self.stream, s.len()).map_err(self.err())
    }

    fn zeros(&self, len: usize) -> Result<Storage> {
        let mut b = self.alloc(len)?;
        if len > 0 {
            b.fill_bytes_async(0, &self.stream).map_err(self.err())?;
        }
        Ok(self.wrap(b, len))
    }

    fn fill(&self, len: usize, value: f32) -> Result<Storage> {
        if value.to_bits() == 0 {
            return self.zeros(len);
        }
        // 0 + value · 1, both operands broadcast constants.
        self.add_views(
            (&self.zero, bcast(&[len])),
            (&self.one, bcast(&[len])),
            value,
            &[len],
        )
    }

    fn materialize(&self, s: &Storage, view: &View) -> Result<Storage> {
        let b = self.buf(s)?;
        self.copy_view(b, lay(&view.shape, &view.strides, view.offset), &view.shape)
    }

    fn scatter_into_zeros(&self, src: &Storage, view: &View, len: usize) -> Result<Storage> {
        if !non_overlapping(view) {
            // Overlapping targets accumulate: host fallback.
            let host = self.host_in(src)?;
            let r = Self::cpu().scatter_into_zeros(&Storage::Cpu(host), view, len)?;
            return self.up(r);
        }
        let s = self.buf(src)?;
        let mut out = self.alloc(len)?;
        if len > 0 {
            out.fill_bytes_async(0, &self.stream).map_err(self.err())?;
        }
        if view.shape.iter().product::<usize>() > 0 {
            // Write `src · 1` through the strided view of the zeroed buffer.
            let ts = self.input(s, contig(&view.shape))?;
            let one = self.input(&self.one, bcast(&view.shape))?;
            let to =
                TensorArg::output::<f32>(&mut out, lay(&view.shape, &view.strides, view.offset))
                    .map_err(self.err())?;
            self.ops().mul(&ts, &one, &to).map_err(self.err())?;
        }
        Ok(self.wrap(out, len))
    }

    fn gather_rows(&self, a: crate::backend::ops::memory::GatherIn) -> Result<Storage> {
        self.gather_rows_dev(a)
    }
}

// ------------------------------------------------------------------ row gathers

use crate::backend::ops::memory::{GatherIn, RowPick};

impl AscendBackend {
    /// One `aclnnIndexSelect` of whole rows, from the single part in place or, with several
    /// parts or fill indices, from the parts and the fill row copied one after the other into
    /// one table; then, unless the pick is whole rows, one strided copy of the picked columns
    /// into their `[blocks, groups, block, len]` layout. The index goes up as INT64.
    fn gather_rows_dev(&self, a: GatherIn) -> Result<Storage> {
        let (p, k) = (a.pick, a.index.len());
        let w = p.width;
        if p.out_len(k) == 0 {
            return self.zeros(0);
        }
        let starts: Vec<usize> = a
            .parts
            .iter()
            .scan(0, |at, t| {
                let s = *at;
                *at += t.rows;
                Some(s)
            })
            .collect();
        let rows: usize = a.parts.iter().map(|t| t.rows).sum();
        let uses_fill = a.index.iter().any(|r| r.is_fill());
        let joined = match (a.parts, uses_fill) {
            ([_], false) => None,
            _ => {
                let n = (rows + uses_fill as usize) * w;
                let mut cat = self.alloc(n)?;
                let fill = match (a.fill, uses_fill) {
                    (Some(f), true) => Some((f.storage, f.offset, rows, 1)),
                    (None, true) => {
                        return Err(Error::Shape {
                            op: "gather_rows",
                            detail: "a fill index without a fill row".into(),
                        })
                    }
                    _ => None,
                };
                let tables = a.parts.iter().zip(&starts);
                let tables = tables.map(|(t, &s)| (t.storage, t.offset, s, t.rows));
                for (src, offset, at, count) in tables.chain(fill) {
                    if count == 0 {
                        continue;
                    }
                    // `src · 1` written into rows `at..at + count` of the table.
                    let dims = [count, w];
                    let ts = self.input(self.buf(src)?, lay(&dims, &[w, 1], offset))?;
                    let one = self.input(&self.one, bcast(&dims))?;
                    let to = TensorArg::output::<f32>(&mut cat, lay(&dims, &[w, 1], at * w))
                        .map_err(self.err())?;
                    self.ops().mul(&ts, &one, &to).map_err(self.err())?;
                }
                Some(self.wrap(cat, n))
            }
        };
        let (table, table_layout) = match &joined {
            Some(s) => (self.buf(s)?, contig(&[s.len() / w, w])),
            None => {
                let t = &a.parts[0];
                (self.buf(t.storage)?, lay(&[t.rows, w], &[w, 1], t.offset))
            }
        };
        let index: Vec<i64> = a
            .index
            .iter()
            .map(|r| match r.is_fill() {
                true => rows as i64,
                false => (starts[r.part] + r.row) as i64,
            })
            .collect();
        let index = self.upload_index(&index)?;
        let mut picked = self.alloc(k * w)?;
        let run = (|| {
            let x = self.input(table, table_layout)?;
            let i = TensorArg::input::<i64>(&index, AclLayout::contiguous(&[k as i64]))
                .map_err(self.err())?;
            let o = TensorArg::output::<f32>(&mut picked, contig(&[k, w])).map_err(self.err())?;
            self.ops().index_select(&x, 0, &i, &o).map_err(self.err())
        })();
        // Back to the cache as an `NpuBuffer` goes (not during an upload).
        let g = self.host_copy.lock().unwrap_or_else(|e| e.into_inner());
        drop(index);
        drop(g);
        let picked = self.wrap(picked, k * w);
        run?;
        if p == (RowPick {
            block: p.block,
            ..RowPick::rows(w)
        }) {
            return Ok(picked);
        }
        let blocks = k / p.block;
        let dims = [blocks, p.groups, p.block, p.len];
        let view = lay(&dims, &[p.block * w, p.len, w, 1], p.col);
        self.copy_view(self.buf(&picked)?, view, &dims)
    }

    /// `host` (indices) in a new device buffer, uploaded as [`MemoryOps::upload`] does.
    fn upload_index(&self, host: &[i64]) -> Result<acl::DeviceBuffer> {
        let g = self.host_copy.lock().unwrap_or_else(|e| e.into_inner());
        self.dev.synchronize().map_err(self.err())?;
        let b = self.dev.upload(host).map_err(self.err())?;
        drop(g);
        Ok(b)
    }
}
