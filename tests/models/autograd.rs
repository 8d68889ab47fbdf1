//! Finite-difference gradient checks for every differentiable op, through the autograd graph.
//!
//! Each check builds `loss = Σ op(inputs) ⊙ r` for a fixed random `r`, back-propagates, and
//! compares each input's gradient with central differences. f32 central differences with step
//! 1e-2 on O(1) values have truncation+rounding error ~1e-3, so the tolerance is 2e-2 relative to
//! the largest gradient entry (plus a small absolute floor).

use medsam::ops::loss::dice_bce_loss;
use medsam::ops::nn::{attention, RelPosArgs};
use medsam::{Device, Tensor};

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        const MUL: u64 = 6364136223846793005;
        const INC: u64 = 1442695040888963407;
        self.0 = self.0.wrapping_mul(MUL).wrapping_add(INC);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

fn t(data: Vec<f32>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(data, shape).unwrap()
}

/// Checks d(Σ f(xs)·r)/dx for every input against central differences.
fn gradcheck(name: &str, inputs: Vec<(Vec<f32>, Vec<usize>)>, f: impl Fn(&[Tensor]) -> Tensor) {
    let mut rng = Lcg(0xC0FFEE);
    let vars: Vec<Tensor> = inputs
        .iter()
        .map(|(d, s)| t(d.clone(), s).into_variable())
        .collect();
    let out = f(&vars);
    let r = t(rng.vec(out.numel()), out.shape());
    let loss = out.mul(&r).unwrap().sum_all().unwrap();
    loss.backward().unwrap();
    let eval = |xs: &[Tensor]| -> f64 {
        let o = medsam::autograd::no_grad(|| f(xs));
        o.to_vec()
            .unwrap()
            .iter()
            .zip(r.to_vec().unwrap())
            .map(|(a, b)| (*a as f64) * (b as f64))
            .sum()
    };
    for (i, (data, shape)) in inputs.iter().enumerate() {
        let analytic = vars[i]
            .grad()
            .unwrap_or_else(|| panic!("{name}: input {i} got no gradient"))
            .to_vec()
            .unwrap();
        let eps = 1e-2f32;
        let mut numeric = vec![0.0f32; data.len()];
        for j in 0..data.len() {
            let mut xs: Vec<Tensor> = inputs.iter().map(|(d, s)| t(d.clone(), s)).collect();
            let mut plus = data.clone();
            plus[j] += eps;
            xs[i] = t(plus, shape);
            let fp = eval(&xs);
            let mut minus = data.clone();
            minus[j] -= eps;
            xs[i] = t(minus, shape);
            let fm = eval(&xs);
            numeric[j] = ((fp - fm) / (2.0 * eps as f64)) as f32;
        }
        let scale = numeric.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-3);
        for (j, (a, n)) in analytic.iter().zip(&numeric).enumerate() {
            assert!(
                (a - n).abs() <= 2e-2 * scale + 1e-4,
                "{name}: d/dinput{i}[{j}] analytic {a} vs numeric {n} (scale {scale})"
            );
        }
    }
}

fn rand(seed: u64, shape: &[usize]) -> (Vec<f32>, Vec<usize>) {
    (Lcg(seed).vec(shape.iter().product()), shape.to_vec())
}

/// [`rand`] inputs of `shapes`, seeded `first_seed`, `first_seed + 1`, ...
fn rands(first_seed: u64, shapes: &[&[usize]]) -> Vec<(Vec<f32>, Vec<usize>)> {
    (first_seed..)
        .zip(shapes)
        .map(|(seed, shape)| rand(seed, shape))
        .collect()
}

#[test]
fn broadcast_arithmetic() {
    gradcheck("add", vec![rand(1, &[2, 3]), rand(2, &[3])], |x| {
        x[0].add(&x[1]).unwrap()
    });
    gradcheck("sub", vec![rand(3, &[2, 1, 3]), rand(4, &[4, 1])], |x| {
        x[0].sub(&x[1]).unwrap()
    });
    gradcheck("mul", vec![rand(5, &[2, 3]), rand(6, &[2, 1])], |x| {
        x[0].mul(&x[1]).unwrap()
    });
    let (d, s) = rand(8, &[3]);
    let d: Vec<f32> = d.iter().map(|v| 1.5 + v.abs()).collect();
    gradcheck("div", vec![rand(7, &[2, 3]), (d, s)], |x| {
        x[0].div(&x[1]).unwrap()
    });
}

#[test]
fn pointwise_functions() {
    for (name, f) in [
        (
            "gelu",
            Tensor::gelu as fn(&Tensor) -> medsam::Result<Tensor>,
        ),
        ("sigmoid", Tensor::sigmoid),
        ("exp", Tensor::exp),
        ("sin", Tensor::sin),
        ("neg", Tensor::neg),
    ] {
        gradcheck(name, vec![rand(9, &[4, 5])], |x| f(&x[0]).unwrap());
    }
    // ReLU away from its kink.
    let (d, s) = rand(10, &[10]);
    let d: Vec<f32> = d
        .iter()
        .map(|v| if v.abs() < 0.1 { 0.5 } else { *v })
        .collect();
    gradcheck("relu", vec![(d, s)], |x| x[0].relu().unwrap());
    gradcheck("scale_shift", vec![rand(11, &[3])], |x| {
        x[0].scale(3.0).unwrap().shift(1.0).unwrap()
    });
}

#[test]
fn views_and_data_movement() {
    gradcheck("permute", vec![rand(12, &[2, 3, 4])], |x| {
        x[0].permute(&[2, 0, 1]).unwrap().contiguous().unwrap()
    });
    gradcheck("reshape_of_view", vec![rand(13, &[2, 3, 4])], |x| {
        x[0].transpose(0, 2).unwrap().reshape(&[4, 6]).unwrap()
    });
    gradcheck("narrow", vec![rand(14, &[3, 5])], |x| {
        x[0].narrow(1, 1, 3).unwrap()
    });
    gradcheck("pad_end", vec![rand(15, &[2, 3])], |x| {
        x[0].pad_end(&[1, 2]).unwrap()
    });
    gradcheck("cat", vec![rand(16, &[2, 3]), rand(17, &[2, 2])], |x| {
        Tensor::cat(&[x[0].clone(), x[1].clone()], 1).unwrap()
    });
    gradcheck("broadcast_to", vec![rand(18, &[1, 3])], |x| {
        x[0].broadcast_to(&[4, 3]).unwrap()
    });
    gradcheck("sum_keepdim", vec![rand(19, &[2, 3, 4])], |x| {
        x[0].sum_keepdim(&[0, 2]).unwrap()
    });
    gradcheck("mean_all", vec![rand(20, &[2, 3])], |x| {
        x[0].mean_all().unwrap()
    });
    gradcheck("gather_rows", vec![rand(21, &[5, 3])], |x| {
        x[0].gather_rows(&[0, 4, 4, 2], &[2, 2]).unwrap()
    });
}

#[test]
fn matrix_products() {
    gradcheck("matmul_2d", rands(22, &[&[3, 4], &[4, 5]]), |x| {
        x[0].matmul(&x[1]).unwrap()
    });
    gradcheck(
        "matmul_batched",
        rands(24, &[&[2, 3, 4], &[2, 4, 2]]),
        |x| x[0].matmul(&x[1]).unwrap(),
    );
    gradcheck(
        "matmul_transposed",
        rands(26, &[&[2, 4, 3], &[2, 2, 4]]),
        |x| {
            x[0].transpose(1, 2)
                .unwrap()
                .matmul(&x[1].transpose(1, 2).unwrap())
                .unwrap()
        },
    );
    gradcheck("linear", rands(28, &[&[2, 3, 4], &[5, 4], &[5]]), |x| {
        x[0].linear(&x[1], Some(&x[2])).unwrap()
    });
}

#[test]
fn convolutions() {
    gradcheck(
        "conv2d_3x3_pad1",
        rands(31, &[&[1, 2, 5, 4], &[3, 2, 3, 3], &[3]]),
        |x| x[0].conv2d(&x[1], Some(&x[2]), 1, 1).unwrap(),
    );
    gradcheck(
        "conv2d_2x2_stride2",
        rands(34, &[&[2, 1, 4, 6], &[2, 1, 2, 2]]),
        |x| x[0].conv2d(&x[1], None, 2, 0).unwrap(),
    );
    gradcheck(
        "conv_transpose2d",
        rands(36, &[&[1, 3, 3, 2], &[3, 2, 2, 2], &[2]]),
        |x| x[0].conv_transpose2d(&x[1], Some(&x[2]), 2).unwrap(),
    );
}

#[test]
fn normalisations_softmax_resize() {
    gradcheck("layer_norm", rands(39, &[&[3, 6], &[6], &[6]]), |x| {
        x[0].layer_norm(&x[1], &x[2], 1e-5).unwrap()
    });
    gradcheck(
        "layer_norm2d",
        rands(42, &[&[2, 4, 2, 3], &[4], &[4]]),
        |x| x[0].layer_norm2d(&x[1], &x[2], 1e-6).unwrap(),
    );
    gradcheck("softmax", vec![rand(45, &[3, 7])], |x| {
        x[0].softmax_last().unwrap()
    });
    gradcheck("bilinear_up", vec![rand(46, &[1, 2, 3, 4])], |x| {
        x[0].upsample_bilinear(7, 5).unwrap()
    });
    gradcheck("bilinear_down", vec![rand(47, &[1, 1, 8, 6])], |x| {
        x[0].upsample_bilinear(3, 4).unwrap()
    });
}

#[test]
fn attention_with_and_without_rel_pos() {
    gradcheck(
        "attention",
        rands(48, &[&[2, 5, 4], &[2, 6, 4], &[2, 6, 3]]),
        |x| attention(&x[0], &x[1], &x[2], 0.5, None).unwrap(),
    );
    gradcheck(
        "attention_relpos",
        rands(
            51,
            &[&[2, 6, 4], &[2, 6, 4], &[2, 6, 4], &[2, 6, 2], &[2, 6, 3]],
        ),
        |x| {
            let rel = RelPosArgs::new([x[3].clone(), x[4].clone()], (2, 3));
            attention(&x[0], &x[1], &x[2], 0.5, Some(&rel)).unwrap()
        },
    );
}

#[test]
fn dice_bce_loss_gradient() {
    let target: Vec<f32> = (0..2 * 16)
        .map(|i| ((i * 7) % 3 == 0) as u8 as f32)
        .collect();
    let tgt = t(target, &[2, 1, 4, 4]);
    gradcheck("dice_bce", vec![rand(56, &[2, 1, 4, 4])], move |x| {
        dice_bce_loss(&x[0], &tgt).unwrap()
    });
}

#[test]
fn gradients_accumulate_and_reset() {
    let x = t(vec![1.0, 2.0], &[2]).into_variable();
    for _ in 0..2 {
        x.scale(3.0).unwrap().sum_all().unwrap().backward().unwrap();
    }
    assert_eq!(x.grad().unwrap().to_vec().unwrap(), vec![6.0, 6.0]);
    x.zero_grad();
    assert!(x.grad().is_none());
    let y = medsam::autograd::no_grad(|| x.scale(2.0).unwrap());
    assert!(!y.requires_grad(), "no_grad must not record");
    assert!(
        x.detach().sum_all().unwrap().backward().is_err(),
        "backward without a graph is an error"
    );
    let _ = Device::Cpu;
}
