//! CPU-vs-NPU parity of a differentiable tensor function, shared by the test binaries that run
//! the NPU backend (on the stand-in, or on hardware with `MEDSAM_NPU_TESTS=1`). Include it after
//! `common/standin.rs` as `mod standin;`.
#![allow(dead_code)]

use crate::standin::{close, data};
use medsam::{Device, Tensor};

/// Each input's shape and data seed.
pub type Inputs<'a> = &'a [(&'a [usize], u64)];

/// Runs `f` on the CPU and on `npu:0` with the same inputs (variables), back-propagates
/// `Σ y ⊙ r` for a fixed random `r`, and compares outputs and every input gradient within `tol`.
pub fn parity(
    name: &str,
    inputs: Inputs,
    tol: f32,
    f: impl Fn(&[Tensor]) -> medsam::Result<Tensor>,
) {
    let run = |dev: Device| -> (Vec<f32>, Vec<Vec<f32>>) {
        let ts: Vec<Tensor> = inputs
            .iter()
            .map(|(shape, seed)| {
                let n = shape.iter().product();
                Tensor::from_slice(&data(n, *seed), shape, dev)
                    .unwrap()
                    .into_variable()
            })
            .collect();
        let y = f(&ts).unwrap_or_else(|e| panic!("{name} on {dev}: {e}"));
        assert_eq!(y.device(), dev, "{name}: result device");
        let r = Tensor::from_slice(&data(y.numel(), 999), y.shape(), dev).unwrap();
        y.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
        let grads = ts
            .iter()
            .map(|t| {
                t.grad()
                    .unwrap_or_else(|| panic!("{name}: no grad"))
                    .to_vec()
                    .unwrap()
            })
            .collect();
        (y.to_vec().unwrap(), grads)
    };
    let (yc, gc) = run(Device::Cpu);
    let (yn, gn) = run(Device::Npu(0));
    close(&format!("{name}: forward"), &yn, &yc, tol);
    for (i, (a, b)) in gn.iter().zip(&gc).enumerate() {
        close(&format!("{name}: grad of input {i}"), a, b, tol);
    }
}
