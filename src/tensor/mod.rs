//! The n-d tensor: a shared buffer on a device plus a strided view of it, and (when it takes part
//! in autograd) an edge into the recorded graph. Reshape, permute, narrow and broadcast are views;
//! kernels receive contiguous buffers, materialised on demand.

use crate::autograd::{self, Edge, Leaf};
use crate::backend::{self, Backend, Device, HostBuf, Storage, View};
use crate::error::{Error, Result};
use half::{bf16, f16};
use std::sync::Arc;

#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    view: View,
    device: Device,
    edge: Option<Edge>,
}

impl Drop for Tensor {
    /// The last owner of a host buffer returns it to the CPU backend's buffer cache.
    fn drop(&mut self) {
        if let Some(Storage::Cpu(v)) = Arc::get_mut(&mut self.storage) {
            backend::cpu::recycle(std::mem::take(v));
        }
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor{:?}@{}", self.view.shape, self.device)
    }
}

/// Row-major strides of a shape.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut acc = 1;
    for d in (0..shape.len()).rev() {
        strides[d] = acc;
        acc *= shape[d];
    }
    strides
}

impl Tensor {
    // ---------- construction ----------

    /// Wraps a fresh contiguous buffer.
    pub fn from_storage(storage: Storage, shape: &[usize], device: Device) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if storage.len() != n {
            return Err(Error::shape(
                "from_storage",
                format!("buffer of {} elements for shape {shape:?}", storage.len()),
            ));
        }
        Ok(Tensor {
            storage: Arc::new(storage),
            view: View {
                shape: shape.to_vec(),
                strides: contiguous_strides(shape),
                offset: 0,
            },
            device,
            edge: None,
        })
    }

    /// A CPU tensor from host data.
    pub fn from_vec(data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
        Tensor::from_storage(Storage::Cpu(data), shape, Device::Cpu)
    }

    /// A CPU tensor from a host buffer: owned, or a window into a file mapping that is read in
    /// place (and copied on the first write).
    pub(crate) fn from_host(data: HostBuf, shape: &[usize]) -> Result<Tensor> {
        Tensor::from_storage(data.into(), shape, Device::Cpu)
    }

    pub fn from_slice(data: &[f32], shape: &[usize], device: Device) -> Result<Tensor> {
        let storage = backend::backend(device)?.upload(data)?;
        Tensor::from_storage(storage, shape, device)
    }

    pub fn from_f16(data: &[f16], shape: &[usize], device: Device) -> Result<Tensor> {
        let v: Vec<f32> = data.iter().map(|x| x.to_f32()).collect();
        Tensor::from_slice(&v, shape, device)
    }

    pub fn from_bf16(data: &[bf16], shape: &[usize], device: Device) -> Result<Tensor> {
        let v: Vec<f32> = data.iter().map(|x| x.to_f32()).collect();
        Tensor::from_slice(&v, shape, device)
    }

    pub fn zeros(shape: &[usize], device: Device) -> Result<Tensor> {
        let n = shape.iter().product();
        Tensor::from_storage(backend::backend(device)?.zeros(n)?, shape, device)
    }

    pub fn full(shape: &[usize], value: f32, device: Device) -> Result<Tensor> {
        let n = shape.iter().product();
        Tensor::from_storage(backend::backend(device)?.fill(n, value)?, shape, device)
    }

    pub fn scalar(value: f32, device: Device) -> Result<Tensor> {
        Tensor::full(&[], value, device)
    }

    // ---------- accessors ----------

    pub fn shape(&self) -> &[usize] {
        &self.view.shape
    }
    pub fn strides(&self) -> &[usize] {
        &self.view.strides
    }
    pub fn offset(&self) -> usize {
        self.view.offset
    }
    pub fn rank(&self) -> usize {
        self.view.shape.len()
    }
    pub fn numel(&self) -> usize {
        self.view.shape.iter().product()
    }
    pub fn device(&self) -> Device {
        self.device
    }
    pub fn dim(&self, d: usize) -> usize {
        self.view.shape[d]
    }
    /// Whether the data is read in place from a memory-mapped checkpoint file (model weights
    /// as loaded; a write, such as an optimizer step, first gives the tensor its own copy).
    pub fn is_mapped(&self) -> bool {
        self.storage.is_mapped()
    }

    pub(crate) fn storage(&self) -> &Storage {
        &self.storage
    }
    /// The shared buffer itself (its identity keys caches of derived data, e.g. int8 weights).
    pub(crate) fn storage_arc(&self) -> &Arc<Storage> {
        &self.storage
    }
    pub(crate) fn view(&self) -> &View {
        &self.view
    }
    pub fn backend(&self) -> Result<Arc<dyn Backend>> {
        backend::backend(self.device)
    }

    pub fn is_contiguous(&self) -> bool {
        let mut expect = 1;
        for d in (0..self.rank()).rev() {
            if self.view.shape[d] != 1 && self.view.strides[d] != expect {
                return false;
            }
            expect *= self.view.shape[d];
        }
        true
    }

    /// Contiguous and covering its whole buffer from the start: the buffer *is* the tensor.
    pub fn is_dense(&self) -> bool {
        self.view.offset == 0 && self.is_contiguous() && self.storage.len() == self.numel()
    }

    /// The elements in row-major order, on the host.
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        let b = self.backend()?;
        if self.is_dense() {
            return b.download(&self.storage);
        }
        b.download(&b.materialize(&self.storage, &self.view)?)
    }

    pub fn to_scalar(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "to_scalar",
                format!("tensor of shape {:?} is not a scalar", self.shape()),
            ));
        }
        Ok(self.to_vec()?[0])
    }

    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device {
            return Ok(self.clone());
        }
        let host = self.to_vec()?;
        Tensor::from_slice(&host, self.shape(), device)
    }

    // ---------- autograd ----------

    pub(crate) fn edge(&self) -> Option<&Edge> {
        self.edge.as_ref()
    }
    pub(crate) fn with_edge(mut self, edge: Option<Edge>) -> Tensor {
        self.edge = edge;
        self
    }
    pub fn requires_grad(&self) -> bool {
        self.edge.is_some()
    }
    /// Makes this tensor a variable (a leaf whose gradient is accumulated in `.grad()`).
    pub fn into_variable(self) -> Tensor {
        self.with_edge(Some(Edge::Leaf(Arc::new(Leaf::default()))))
    }
    /// The same data without graph history.
    pub fn detach(&self) -> Tensor {
        self.clone().with_edge(None)
    }
    /// The accumulated gradient of a variable.
    pub fn grad(&self) -> Option<Tensor> {
        match &self.edge {
            Some(Edge::Leaf(l)) => l.grad(),
            _ => None,
        }
    }
    pub fn set_grad(&self, g: Option<Tensor>) {
        if let Some(Edge::Leaf(l)) = &self.edge {
            l.set_grad(g)
        }
    }
    pub fn zero_grad(&self) {
        self.set_grad(None)
    }
    /// Back-propagates from this scalar into every variable it depends on.
    pub fn backward(&self) -> Result<()> {
        autograd::backward(self)
    }

    /// Replaces the data of a variable in place, keeping its identity and gradient slot (used by
    /// optimizers and checkpoint loading).
    pub fn assign(&mut self, src: &Tensor) -> Result<()> {
        if src.shape() != self.shape() {
            return Err(Error::shape(
                "assign",
                format!("{:?} into {:?}", src.shape(), self.shape()),
            ));
        }
        let src = src.to_device(self.device)?.contiguous()?;
        let dense = if src.is_dense() { src } else { src.copy()? };
        self.storage = dense.storage.clone();
        self.view = dense.view.clone();
        Ok(())
    }

    /// Mutable access to a uniquely owned dense buffer, copying first if it is shared.
    pub(crate) fn storage_mut(&mut self) -> Result<&mut Storage> {
        if !self.is_dense() || Arc::strong_count(&self.storage) > 1 {
            let mut copy = self.copy()?;
            std::mem::swap(&mut self.storage, &mut copy.storage);
            std::mem::swap(&mut self.view, &mut copy.view);
        }
        Arc::get_mut(&mut self.storage).ok_or_else(|| Error::Other("storage is shared".into()))
    }

    // ---------- views ----------

    fn with_view(&self, view: View) -> Tensor {
        Tensor {
            storage: self.storage.clone(),
            view,
            device: self.device,
            edge: None,
        }
    }

    /// A new dense copy of the data (no graph).
    pub fn copy(&self) -> Result<Tensor> {
        let b = self.backend()?;
        let s = b.materialize(&self.storage, &self.view)?;
        Tensor::from_storage(s, self.shape(), self.device)
    }

    pub(crate) fn raw_view(&self, view: View) -> Tensor {
        self.with_view(view)
    }
}
