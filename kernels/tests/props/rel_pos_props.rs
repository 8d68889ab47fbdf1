//! SAM's decomposed rel-pos terms: every instruction set this CPU runs, forced, against the f64
//! oracle on random shapes (widths that are not whole vectors, more than 64 keys, one row, an
//! empty channel axis), bit-identical across instruction sets and thread counts, and a
//! hand-computed case.

use medsam_kernels::attention::rel_pos::{
    decomposed_rel_pos, decomposed_rel_pos_with, reference, RelPosDims, RelPosIsa,
};
use medsam_kernels::testing::{assert_close, data, with_threads};
use proptest::prelude::*;

fn dims() -> impl Strategy<Value = RelPosDims> {
    (
        1usize..4,
        1usize..9,
        1usize..20,
        0usize..40,
        1usize..80,
        1usize..80,
    )
        .prop_map(|(maps, h, w, c, kh, kw)| RelPosDims {
            maps,
            h,
            w,
            c,
            kh,
            kw,
        })
}

type Outputs = (Vec<f32>, Vec<f32>);

fn inputs(d: RelPosDims, seed: u64) -> [Vec<f32>; 3] {
    [
        data(d.maps * d.h * d.w * d.c, seed, 2.0),
        data(d.h * d.kh * d.c, seed ^ 1, 1.0),
        data(d.w * d.kw * d.c, seed ^ 2, 1.0),
    ]
}

fn run(isa: Option<RelPosIsa>, d: RelPosDims, [q, rh, rw]: &[Vec<f32>; 3]) -> Outputs {
    let n = d.maps * d.h * d.w;
    let (mut oh, mut ow) = (vec![f32::NAN; n * d.kh], vec![f32::NAN; n * d.kw]);
    match isa {
        Some(isa) => decomposed_rel_pos_with(isa, d, q, rh, rw, &mut oh, &mut ow),
        None => reference::decomposed_rel_pos(d, q, rh, rw, &mut oh, &mut ow),
    }
    (oh, ow)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn every_isa_matches_the_oracle(d in dims(), seed in any::<u64>()) {
        let x = inputs(d, seed);
        let (want_h, want_w) = run(None, d, &x);
        let tol = 1e-5 * (d.c as f32).sqrt().max(1.0);
        let first = run(Some(RelPosIsa::available()[0]), d, &x);
        for isa in RelPosIsa::available() {
            let (h, w) = run(Some(isa), d, &x);
            assert_close(&format!("rel_h {isa:?} {d:?}"), &h, &want_h, tol, 1e-5);
            assert_close(&format!("rel_w {isa:?} {d:?}"), &w, &want_w, tol, 1e-5);
            prop_assert_eq!(bits(&h), bits(&first.0), "rel_h differs between ISAs");
            prop_assert_eq!(bits(&w), bits(&first.1), "rel_w differs between ISAs");
        }
    }
}

/// SAM's two shapes (a 14×14 window, the 64×64 global map, 64-wide heads): one thread and two
/// give the same bits.
#[test]
fn sam_shapes_do_not_depend_on_the_thread_count() {
    for (maps, hw) in [(24, 14), (3, 64)] {
        let d = RelPosDims {
            maps,
            h: hw,
            w: hw,
            c: 64,
            kh: hw,
            kw: hw,
        };
        let x = inputs(d, 7);
        let one = with_threads(1, || run(Some(RelPosIsa::available()[0]), d, &x));
        let two = with_threads(2, || run(Some(RelPosIsa::available()[0]), d, &x));
        assert_eq!(bits(&one.0), bits(&two.0));
        assert_eq!(bits(&one.1), bits(&two.1));
        let (want_h, want_w) = run(None, d, &x);
        assert_close("rel_h", &one.0, &want_h, 1e-4, 1e-5);
        assert_close("rel_w", &one.1, &want_w, 1e-4, 1e-5);
    }
}

/// One map of 1×2 tokens, two channels: worked by hand.
#[test]
fn hand_computed() {
    let d = RelPosDims {
        maps: 1,
        h: 1,
        w: 2,
        c: 2,
        kh: 1,
        kw: 2,
    };
    let q = [1.0, 2.0, 3.0, 4.0]; // token x=0: (1, 2), x=1: (3, 4)
    let rh = [10.0, 100.0]; // y=0, k=0
    let rw = [1.0, 0.0, 0.0, 1.0, 2.0, 2.0, -1.0, 1.0]; // x=0: k0 (1,0) k1 (0,1); x=1: (2,2) (-1,1)
    let (mut oh, mut ow) = (vec![0.0; 2], vec![0.0; 4]);
    decomposed_rel_pos(d, &q, &rh, &rw, &mut oh, &mut ow);
    assert_eq!(oh, [210.0, 430.0]);
    assert_eq!(ow, [1.0, 2.0, 14.0, 1.0]);
}
