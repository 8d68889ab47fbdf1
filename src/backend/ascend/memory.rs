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
}
