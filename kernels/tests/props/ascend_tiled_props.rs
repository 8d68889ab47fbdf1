//! The host reference of the Ascend C kernels (`medsam_kernels::ascend_tiled`, the same tiling
//! and online-softmax recurrences as `kernels/ascend/*.cpp`) against the CPU oracles, on random
//! shapes and random tilings (tile sizes that do not divide the sizes, more cores than work).

use medsam_kernels::ascend_tiled::{
    self as tiled, AttnGm, LayerNorm2dTiling, Ln2dGm, Ln2dOut, RelPosAttnTiling,
};
use medsam_kernels::attention::{reference as attn_ref, AttnDims, RelPosBias};
use medsam_kernels::norm::reference as norm_ref;
use medsam_kernels::testing::data;
use proptest::prelude::*;

fn close(what: &str, got: &[f32], want: &[f32], tol: f32) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        prop_assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{}[{}]: tiled {}, reference {}",
            what,
            i,
            g,
            w
        );
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn check_attention(
    bh: usize,
    nq: usize,
    grid: (usize, usize),
    d: usize,
    dv: usize,
    rel: bool,
    tiles: (usize, usize, usize),
    seed: u64,
) -> Result<(), TestCaseError> {
    let (kh, kw) = grid;
    let nk = kh * kw;
    let (tile_q, tile_k, block_dim) = tiles;
    let scale = 1.0 / (d as f32).sqrt();
    let q = data(bh * nq * d, seed, 2.0);
    let k = data(bh * nk * d, seed + 1, 2.0);
    let v = data(bh * nk * dv, seed + 2, 1.0);
    let rh = data(bh * nq * kh, seed + 3, 1.0);
    let rw = data(bh * nq * kw, seed + 4, 1.0);
    let t = RelPosAttnTiling {
        bh: bh as u32,
        nq: nq as u32,
        nk: nk as u32,
        d: d as u32,
        dv: dv as u32,
        kh: kh as u32,
        kw: kw as u32,
        has_rel: rel as u32,
        tile_q: tile_q as u32,
        tile_k: tile_k as u32,
        block_dim: block_dim as u32,
        q_tiles: nq.div_ceil(tile_q) as u32,
        scale,
        reserved: 0,
    };
    prop_assert!(t.validate().is_ok());
    let gm = AttnGm {
        q: &q,
        k: &k,
        v: &v,
        rel_h: if rel { &rh } else { &[] },
        rel_w: if rel { &rw } else { &[] },
    };
    let (mut out, mut lse) = (vec![f32::NAN; bh * nq * dv], vec![f32::NAN; bh * nq]);
    tiled::rel_pos_attention(&t, &gm, &mut out, &mut lse);
    let (mut out_r, mut lse_r) = (vec![0f32; bh * nq * dv], vec![0f32; bh * nq]);
    let bias = rel.then_some(RelPosBias {
        rel_h: &rh,
        rel_w: &rw,
        kh,
        kw,
    });
    let dims = AttnDims { bh, nq, nk, d, dv };
    attn_ref::attention_forward(dims, &q, &k, &v, scale, bias, &mut out_r, &mut lse_r);
    close("out", &out, &out_r, 1e-4)?;
    close("lse", &lse, &lse_r, 1e-4)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn tiled_attention_matches_reference(
        bh in 1usize..4, nq in 1usize..40, kh in 1usize..8, kw in 1usize..8,
        d in 1usize..20, dv in 1usize..20, rel in any::<bool>(),
        tile_q in 1usize..20, tile_k in 1usize..24, block_dim in 1usize..6, seed in 0u64..1000,
    ) {
        check_attention(bh, nq, (kh, kw), d, dv, rel, (tile_q, tile_k, block_dim), seed)?;
    }

    #[test]
    fn tiled_layer_norm2d_matches_reference(
        n in 1usize..3, c in 1usize..40, hw in 1usize..80,
        tile_hw in 1usize..40, block_dim in 1usize..6, seed in 0u64..1000,
    ) {
        let x = data(n * c * hw, seed, 3.0);
        let g = data(c, seed + 1, 1.0);
        let b = data(c, seed + 2, 1.0);
        let t = LayerNorm2dTiling {
            n: n as u32, c: c as u32, hw: hw as u32, tile_hw: tile_hw as u32,
            block_dim: block_dim as u32, hw_tiles: hw.div_ceil(tile_hw) as u32,
            eps: 1e-6, reserved: 0,
        };
        prop_assert!(t.validate().is_ok());
        let (mut y, mut m, mut r) = (vec![f32::NAN; n * c * hw], vec![f32::NAN; n * hw], vec![f32::NAN; n * hw]);
        tiled::layer_norm2d(&t, &Ln2dGm { x: &x, gamma: &g, beta: &b },
            &mut Ln2dOut { y: &mut y, mean: &mut m, rstd: &mut r });
        let (mut yr, mut mr, mut rr) = (vec![0f32; n * c * hw], vec![0f32; n * hw], vec![0f32; n * hw]);
        norm_ref::layer_norm2d_forward(n, c, hw, &x, &g, &b, 1e-6, &mut yr, &mut mr, &mut rr);
        close("y", &y, &yr, 1e-4)?;
        close("mean", &m, &mr, 1e-4)?;
        close("rstd", &r, &rr, 1e-4)?;
    }
}

/// SAM's shapes: windowed 14×14 and global 64×64 tokens (one head, reduced d to keep the
/// reference fast), with the tile sizes the launch glue picks on a 910B-class UB.
#[test]
fn sam_shapes() {
    check_attention(2, 196, (14, 14), 64, 64, true, (16, 128, 8), 7).unwrap();
    check_attention(1, 4096, (64, 64), 16, 16, true, (64, 256, 20), 8).unwrap();
}
