//! CPU backend: buffers: upload, download, fill, and strided copies in and out of views.

use super::*;

impl MemoryOps for CpuBackend {
    fn upload(&self, host: &[f32]) -> Result<Storage> {
        Ok(Storage::Cpu(host.to_vec()))
    }

    fn download(&self, s: &Storage) -> Result<Vec<f32>> {
        Ok(host(s)?.to_vec())
    }

    fn zeros(&self, len: usize) -> Result<Storage> {
        Ok(Storage::Cpu(vec![0.0; len]))
    }

    fn fill(&self, len: usize, value: f32) -> Result<Storage> {
        Ok(Storage::Cpu(vec![value; len]))
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
}
