"""medsam_rs.VideoPredictor against the official sam2 package: the tiny SAM 2 of
tests/fixtures/sam2 (name-seeded weights, tests/fixtures/sam2_named.py) run through the binding
must reproduce SAM2VideoPredictor's per-frame logits (tests/fixtures/make_sam2_fixtures.py made
them), forward and in reverse; plus MedSAM2's volume recipe and bad input."""
import json
import os
import struct
import sys

import numpy as np
import pytest

import medsam_rs

from conftest import FIXTURES

sys.path.insert(0, FIXTURES)
import sam2_named  # noqa: E402

SAM2 = os.path.join(FIXTURES, "sam2")
TOL = 1e-3  # as tests/models/sam2_parity.rs: errors compound through the memory bank


def read_safetensors(path):
    """float32 tensors of a .safetensors file (8-byte header length, JSON header, data)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32", (k, v["dtype"])
        a, b = v["data_offsets"]
        out[k] = np.frombuffer(data[a:b], dtype="<f4").reshape(v["shape"])
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    meta_path = os.path.join(SAM2, "tiny.json")
    if not os.path.exists(meta_path):
        pytest.skip(f"{meta_path} missing: run tests/fixtures/make_sam2_fixtures.py")
    with open(meta_path) as f:
        meta = json.load(f)
    d = tmp_path_factory.mktemp("sam2")
    sd = {k: sam2_named.named_fill(k, tuple(s)) for k, s in meta["param_shapes"].items()}
    ckpt = str(d / "tiny_sam2.pt")
    medsam_rs.save_checkpoint(ckpt, {"model": sd})
    cfg = str(d / "tiny_sam2.json")
    with open(cfg, "w") as f:
        json.dump(meta["config"], f)
    want = read_safetensors(os.path.join(SAM2, "tiny.safetensors"))
    return meta, ckpt, cfg, want


def predictor(tiny):
    _, ckpt, cfg, _ = tiny
    return medsam_rs.VideoPredictor(ckpt, config=cfg, fill_hole_area=0)


def max_err(got, want, stride):
    g = np.asarray(got, np.float32).ravel()[::stride]
    assert g.shape == want.ravel().shape
    assert np.isfinite(g).all()
    return float(np.abs(g - want.ravel()).max())


@pytest.mark.parametrize("direction", ["fwd", "rev"])
def test_propagation_matches_sam2(tiny, direction):
    meta, _, _, want = tiny
    p = predictor(tiny)
    n = meta["n_frames"]
    vh, vw = meta["video_hw"]
    frames = sam2_named.frames(n, p.image_size, 1)
    state = p.init_state(frames, video_size=(vh, vw))
    assert state.num_frames == n and state.video_size == (vh, vw)
    key = meta[f"key_{direction}"]
    box = np.array(meta[f"box_{direction}"], np.float32)
    t, ids, m = p.add_new_points_or_box(state, frame_idx=key, obj_id=1, box=box)
    assert (t, ids, m.shape) == (key, [1], (1, 1, vh, vw))
    e = max_err(m, want[f"tiny.{direction}.prompt_video_res"], 7)
    assert e <= TOL, f"prompt frame: {e}"
    seen = []
    out = p.propagate_in_video(state, start_frame_idx=key, reverse=direction == "rev",
                               callback=lambda f, i, mm: seen.append((f, i, mm.shape)))
    order = [t for t, _, _ in out]
    assert order == [t for t, _ in meta["object_scores"][direction]]
    assert [s[0] for s in seen] == order
    errs = [max_err(mm, want[f"tiny.{direction}.video_res.{t}"], 7) for t, _, mm in out]
    print(direction, "per-frame max |logit error|:", ["%.1e" % e for e in errs])
    assert max(errs) <= TOL


def test_reset_and_state_errors(tiny):
    meta, _, _, _ = tiny
    p = predictor(tiny)
    vh, vw = meta["video_hw"]
    state = p.init_state(sam2_named.frames(3, p.image_size, 1), video_size=(vh, vw))
    p.add_new_points_or_box(state, 0, 5, points=np.array([[30, 40]]), labels=np.array([1]))
    assert state.obj_ids == [5]
    p.reset_state(state)
    assert state.obj_ids == []
    with pytest.raises(medsam_rs.InvalidArgumentError, match="frame_idx"):
        p.add_new_points_or_box(state, 3, 1, box=np.array([1, 1, 5, 5]))
    with pytest.raises(medsam_rs.InvalidArgumentError, match="box"):
        p.add_new_points_or_box(state, 0, 1, box=np.array([1, 1, 5]))
    with pytest.raises(medsam_rs.InvalidArgumentError, match="labels"):
        p.add_new_points_or_box(state, 0, 1, points=np.array([[1, 1]]), labels=np.array([2]))
    with pytest.raises(medsam_rs.InvalidArgumentError, match="prompt"):
        p.add_new_points_or_box(state, 0, 1)
    with pytest.raises(medsam_rs.InvalidArgumentError, match="video_size"):
        p.init_state(sam2_named.frames(2, p.image_size, 1))
    with pytest.raises(medsam_rs.InvalidArgumentError, match="frames"):
        p.init_state(np.zeros((2, 5), np.uint8))


def test_segment_volume_is_the_or_of_both_passes(tiny):
    """MedSAM2's recipe through the binding equals forward ∪ reverse from the key slice, done
    by hand with the same predictor (largest-component step off)."""
    p = predictor(tiny)
    rng = np.random.default_rng(0)
    d, h, w = 6, 40, 56
    vol = (rng.random((d, h, w)) * 60).astype(np.uint8)
    vol[:, 10:30, 15:40] += 150
    box = np.array([14, 9, 1, 41, 31, 5])
    labels = p.segment_volume(vol, box, keep_largest_cc=False)
    assert labels.shape == (d, h, w) and labels.dtype == np.uint8
    state = p.init_state(vol)
    union = np.zeros((d, h, w), bool)
    for reverse in (False, True):
        p.reset_state(state)
        p.add_new_points_or_box(state, 3, 1, box=np.array([14, 9, 41, 31], np.float32))
        for t, _, m in p.propagate_in_video(state, reverse=reverse):
            union[t] |= m[0, 0] > 0
    np.testing.assert_array_equal(labels, union.astype(np.uint8))
    progress = []
    p.segment_volume(vol, box, progress=lambda ps, z: progress.append((ps, z)))
    assert len(progress) > 0 and {ps for ps, _ in progress} <= {0, 1}


def test_volume_bad_input(tiny):
    p = predictor(tiny)
    vol = np.zeros((4, 20, 20), np.uint8)
    with pytest.raises(medsam_rs.InvalidArgumentError, match="outside the volume"):
        p.segment_volume(vol, np.array([0, 0, 0, 30, 10, 2]))
    with pytest.raises(medsam_rs.InvalidArgumentError, match="z range"):
        p.segment_volume(vol, np.array([0, 0, 0, 10, 10, 2]), key_slices=[3])
    with pytest.raises(medsam_rs.InvalidArgumentError, match="width"):
        p.segment_volume(vol.astype(np.float32), np.array([0, 0, 0, 10, 10, 2]),
                         window=(40.0, 0.0))
    bad = vol.astype(np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(medsam_rs.InvalidArgumentError, match="NaN"):
        p.segment_volume(bad, np.array([0, 0, 0, 10, 10, 2]))


def test_other_family_is_named(tmp_path):
    ckpt = str(tmp_path / "vit.pth")
    medsam_rs.save_checkpoint(ckpt, {"image_encoder.blocks.0.norm1.weight": np.ones(4, np.float32)})
    with pytest.raises(medsam_rs.MedsamError, match="SAM/MedSAM"):
        medsam_rs.VideoPredictor(ckpt)
    with pytest.raises(FileNotFoundError):
        medsam_rs.VideoPredictor(str(tmp_path / "missing.pt"))


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_precision_is_the_encoders(tiny, precision):
    """`precision` sets the image encoder's precision (read back, in the repr); tracking at it
    stays close to f32's logits; an unknown name is a ValueError naming the choices."""
    _, ckpt, cfg, _ = tiny
    f32 = predictor(tiny)
    low = medsam_rs.VideoPredictor(ckpt, config=cfg, fill_hole_area=0, precision=precision)
    assert low.precision == precision and f32.precision == "f32"
    assert f"precision={precision!r}".replace("'", '"') in repr(low)
    frames = sam2_named.frames(4, low.image_size, 1)
    outs = []
    for p in (f32, low):
        state = p.init_state(frames, video_size=(64, 64))
        p.add_new_points_or_box(state, 0, 1, box=np.array([10, 12, 40, 44], np.float32))
        outs.append(np.concatenate([m.ravel() for _, _, m in p.propagate_in_video(state)]))
    assert np.corrcoef(outs[0], outs[1])[0, 1] > 0.99
    with pytest.raises(ValueError, match="int8"):
        medsam_rs.VideoPredictor(ckpt, config=cfg, precision="fp4")
