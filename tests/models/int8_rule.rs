//! Which precision a linear layer runs in under `--precision int8` (`medsam::ops::quant`): the
//! size rule sends small and narrow layers to the faster float GEMM (bf16 where this CPU's bf16
//! pays, else f32), large layers of every kind to the int8 kernel; `int8_every_size` forces int8.

use medsam::autograd::no_grad;
use medsam::ops::linalg::autocast_bf16;
use medsam::ops::quant::{autocast_int8, int8_every_size, unquantized_in_bf16};
use medsam::Tensor;
use medsam_kernels::gemm::int8::{self, Int8Kernel};
use medsam_kernels::gemm::{bf16_plan, Epilogue, Precision};

/// `x [m, k]`, `w [n, k]`, `b [n]` with deterministic values of both signs.
fn layer(m: usize, k: usize, n: usize) -> (Tensor, Tensor, Tensor) {
    let val = |i: usize, s: usize| ((i * s + 17) % 101) as f32 / 50.0 - 1.0;
    let x = Tensor::from_vec((0..m * k).map(|i| val(i, 7)).collect(), &[m, k]).unwrap();
    let w = Tensor::from_vec((0..n * k).map(|i| val(i, 13) * 0.1).collect(), &[n, k]).unwrap();
    let b = Tensor::from_vec((0..n).map(|i| val(i, 3)).collect(), &[n]).unwrap();
    (x, w, b)
}

/// `x·wᵀ + b` under the given autocasts.
fn linear(l: &(Tensor, Tensor, Tensor), int8: bool, bf16: bool) -> Vec<f32> {
    let (x, w, b) = l;
    no_grad(|| autocast_bf16(bf16, || autocast_int8(int8, || x.linear(w, Some(b)))))
        .unwrap()
        .to_vec()
        .unwrap()
}

#[test]
fn small_layers_run_in_the_faster_float_precision() {
    // (k, n) = (64, 192): below both size thresholds; (768, 192): an MLP fc2 too narrow to pay.
    for (k, n) in [(64, 192), (768, 192)] {
        let l = layer(37, k, n);
        // bf16 where this CPU's bf16 pays (`bf16_plan`), unless MEDSAM_INT8_REST=f32.
        let rest_bf16 = unquantized_in_bf16();
        assert!(!rest_bf16 || bf16_plan().precision == Precision::Bf16);
        assert_eq!(
            linear(&l, true, false),
            linear(&l, false, rest_bf16),
            "k {k}, n {n}"
        );
        if Int8Kernel::best().is_vnni() {
            let forced = int8_every_size(|| linear(&l, true, false));
            assert_ne!(
                forced,
                linear(&l, false, false),
                "int8_every_size changed nothing"
            );
        }
    }
}

#[test]
fn large_layers_of_every_kind_run_in_int8() {
    // Widening (qkv, fc1), square (attention proj), narrowing (fc2).
    for (m, k, n) in [(29, 256, 512), (29, 256, 256), (29, 512, 256)] {
        large_layer_runs_in_int8(m, k, n);
    }
}

fn large_layer_runs_in_int8(m: usize, k: usize, n: usize) {
    let l = layer(m, k, n);
    let got = linear(&l, true, false);
    if !Int8Kernel::best().is_vnni() {
        // Without VNNI int8 would only cost accuracy: the layer stays in float.
        println!("SKIPPED: large_layers_of_every_kind_run_in_int8: no VNNI on this CPU");
        assert_eq!(got, linear(&l, false, false));
        return;
    }
    let (x, w, b) = (
        &l.0.to_vec().unwrap(),
        &l.1.to_vec().unwrap(),
        &l.2.to_vec().unwrap(),
    );
    let mut want = vec![0.0; m * n];
    let ep = Epilogue {
        col_bias: Some(b),
        ..Epilogue::default()
    };
    int8::reference::linear(x, m, k, w, n, &mut want, ep);
    for (i, (g, r)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - r).abs() <= 1e-5 * (1.0 + r.abs()),
            "({k} → {n}) element {i}: {g} vs int8 reference {r}"
        );
    }
}
