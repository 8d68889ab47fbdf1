//! Hiera's attention in inference (`MultiScaleAttention::attend_inference`: no materialised
//! windows, q/k/v projected on the map's tokens only, queries only inside the map, pooled
//! queries pooled on the map) against upstream's composition (pad → partition → attend →
//! unpartition → crop, `MultiScaleBlock::forward_composed`), block by block, on maps that tile into
//! whole windows and maps that need padding, square and not, pooled and not, odd windows.

use medsam::autograd::no_grad;
use medsam::models::common::Init;
use medsam::models::sam2::config::TrunkConfig;
use medsam::models::sam2::hieradet::Hiera;
use medsam::{Device, Tensor};

/// A deterministic, sign-varying test input.
fn input(shape: &[usize], seed: usize) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|i| ((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.0 - 1.0)
        .collect();
    Tensor::from_slice(&data, shape, Device::Cpu).unwrap()
}

#[test]
fn hiera_blocks_inference_path_matches_upstreams_composition() {
    // Blocks: 0 (stage 1, window 6), 1 (pools, window 6 lagged) and 2 (window 4), 3 (pools,
    // window 4 lagged) and 4 (global), 5 (pools, window 2 lagged) and 6 (window 3: odd).
    let cfg = TrunkConfig {
        embed_dim: 16,
        num_heads: 2,
        stages: vec![1, 2, 2, 2],
        global_att_blocks: vec![4],
        window_spec: vec![6, 4, 2, 3],
        ..TrunkConfig::default()
    };
    let hiera = Hiera::new(&mut Init::new(7, Device::Cpu), &cfg).unwrap();
    let mut checked = 0;
    for (i, blk) in hiera.blocks.iter().enumerate() {
        for (seed, &(h, w)) in [(12, 12), (10, 14), (8, 6), (14, 10)].iter().enumerate() {
            let x = input(&[2, h, w, blk.dim], seed + 10 * i);
            let fast = no_grad(|| blk.forward(&x)).unwrap();
            let composed = no_grad(|| blk.forward_composed(&x)).unwrap();
            assert_eq!(fast.shape(), composed.shape(), "block {i}, map {h}×{w}");
            let (a, b) = (fast.to_vec().unwrap(), composed.to_vec().unwrap());
            let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let err = a
                .iter()
                .zip(&b)
                .fold(0.0f32, |m, (p, q)| m.max((p - q).abs()));
            assert!(
                err <= 2e-6 * scale.max(1.0),
                "block {i} (window {}, pooled {}), map {h}×{w}: max abs error {err:e} (|value| up to {scale})",
                blk.window_size,
                blk.q_stride.is_some(),
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 28);
}
