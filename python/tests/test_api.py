"""The package's surface: errors (types and messages), input layouts and dtypes, metrics,
checkpoints (torch round trip when torch is installed), CT/MR normalisation and training."""
import os

import numpy as np
import pytest
from conftest import LITE_CONFIG, SAM_CONFIG

import medsam_rs
from medsam_rs import metrics


@pytest.fixture(scope="module")
def lite(lite_ckpt):
    return medsam_rs.Predictor(lite_ckpt, config=LITE_CONFIG)


@pytest.fixture(scope="module")
def image():
    y, x = np.mgrid[:40, :56]
    g = (np.sin(x / 4.0) * 80 + 120 + y).clip(0, 255).astype(np.uint8)
    return np.stack([g, g[::-1], g[:, ::-1]], -1)


# ---- errors
def test_missing_checkpoint_is_file_not_found(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError) as e:
        medsam_rs.Predictor(str(missing))
    assert isinstance(e.value, medsam_rs.MedsamError)
    assert isinstance(e.value, medsam_rs.MedsamFileNotFoundError)
    assert "nope.pth" in str(e.value) and "not found" in str(e.value)
    with pytest.raises(FileNotFoundError):
        medsam_rs.load_checkpoint(missing)


def test_corrupt_checkpoint_is_medsam_error(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a zip archive")
    with pytest.raises(medsam_rs.MedsamError, match="bad.pth"):
        medsam_rs.Predictor(bad)


def test_bad_options(lite_ckpt, sam_ckpt):
    with pytest.raises(ValueError, match="model_type"):
        medsam_rs.Predictor(lite_ckpt, model_type="vit_q")
    with pytest.raises(ValueError, match="precision"):
        medsam_rs.Predictor(lite_ckpt, config=LITE_CONFIG, precision="f8")
    with pytest.raises(ValueError, match="transform"):
        medsam_rs.Predictor(lite_ckpt, config=LITE_CONFIG, transform="sam")
    with pytest.raises(ValueError, match="lite"):
        medsam_rs.Predictor(sam_ckpt, config=SAM_CONFIG, model_type="lite")
    with pytest.raises(ValueError, match="device"):
        medsam_rs.Predictor(lite_ckpt, config=LITE_CONFIG, device="gpu")


def test_bad_images(lite):
    for bad, what in [(np.zeros((4, 5, 4), np.uint8), "shape"), (np.zeros((2, 3, 4, 5), np.uint8), "shape"),
                      (np.zeros((0, 5), np.uint8), "no pixels"), (np.zeros((4, 5), np.int16), "dtype"),
                      (np.full((4, 5), 2.0), r"\[0, 1\]"), (np.full((4, 5), np.nan, np.float32), r"\[0, 1\]")]:
        with pytest.raises(medsam_rs.InvalidArgumentError, match=what):
            lite.set_image(bad)
    with pytest.raises(ValueError, match="numpy array"):
        lite.set_image([[1, 2], [3, 4]])


def test_predict_errors(lite_ckpt, image):
    p = medsam_rs.Predictor(lite_ckpt, config=LITE_CONFIG)
    with pytest.raises(medsam_rs.MedsamError, match="set_image"):
        p.predict(box=np.array([1, 2, 3, 4]))
    with pytest.raises(medsam_rs.MedsamError, match="set_image"):
        p.get_image_embedding()
    p.set_image(image)
    for kw, what in [(dict(box=np.array([1, 2, 3])), "box"), (dict(box=np.array([5, 5, 1, 1])), "x1 < x0"),
                     (dict(box=np.array([0, 0, np.inf, 3])), "non-finite"),
                     (dict(point_coords=np.array([[1.0, 2.0]])), "both"),
                     (dict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([1, 1])), "point_labels"),
                     (dict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([3])), "not 1"),
                     (dict(box=np.zeros((2, 4)), point_coords=np.zeros((3, 1, 2)), point_labels=np.ones((3, 1))),
                      "point sets"),
                     ({}, "give a box")]:
        with pytest.raises(ValueError, match=what):
            p.predict(**kw)


# ---- inputs and outputs
def test_shapes_batches_and_layouts(lite, image):
    lite.set_image(image)
    assert lite.is_image_set and lite.original_size == (40, 56) and lite.img_size == 64
    box = np.array([5, 6, 40, 30])
    m, iou, low = lite.predict(box=box)
    assert m.shape == (1, 40, 56) and iou.shape == (1,) and low.shape == (1, 64, 64)
    m3, iou3, low3 = lite.predict(box=box, multimask_output=True)
    assert m3.shape == (3, 40, 56) and iou3.shape == (3,)
    mb, ioub, lowb = lite.predict(box=np.stack([box, box + 2]))
    assert mb.shape == (2, 1, 40, 56) and ioub.shape == (2, 1) and lowb.shape == (2, 1, 64, 64)
    np.testing.assert_allclose(lowb[0], low, atol=1e-5)
    mp, _, _ = lite.predict(point_coords=np.array([[20.0, 15.0]]), point_labels=np.array([1]))
    assert mp.shape == (1, 40, 56)
    # Non-contiguous views (copied) and float images in [0, 1] give the same answer.
    flipped = np.ascontiguousarray(image[:, ::-1])
    lite.set_image(flipped)
    want = lite.predict(box=box)[2]
    lite.set_image(image[:, ::-1])
    np.testing.assert_array_equal(lite.predict(box=box)[2], want)
    lite.set_image(flipped.astype(np.float64) / 255.0)
    np.testing.assert_array_equal(lite.predict(box=box)[2], want)
    grey = image[:, :, 0]
    lite.set_image(grey)
    g2 = lite.predict(box=box)[2]
    lite.set_image(np.repeat(grey[:, :, None], 3, -1))
    np.testing.assert_allclose(lite.predict(box=box)[2], g2, atol=1e-6)
    lite.set_image(np.ascontiguousarray(flipped[:, :, ::-1]), image_format="BGR")
    np.testing.assert_array_equal(lite.predict(box=box)[2], want)
    with pytest.raises(ValueError, match="image_format"):
        lite.set_image(flipped, image_format="HSV")
    lite.reset_image()
    assert not lite.is_image_set


def test_segment_volume_needs_lite_and_uint8(sam_ckpt, lite):
    sam = medsam_rs.Predictor(sam_ckpt, config=SAM_CONFIG)
    vol = np.zeros((3, 20, 20), np.uint8)
    with pytest.raises(ValueError, match="LiteMedSAM"):
        medsam_rs.segment_volume(sam, vol, np.array([1, 1, 0, 10, 10, 3]))
    with pytest.raises(ValueError, match="uint8"):
        medsam_rs.segment_volume(lite, vol.astype(np.float32), np.array([1, 1, 0, 10, 10, 3]))
    with pytest.raises(ValueError, match="z range"):
        medsam_rs.segment_volume(lite, vol, np.array([1, 1, 2, 10, 10, 9]))
    with pytest.raises(ValueError, match=r"\(6,\)"):
        medsam_rs.segment_volume(lite, vol, np.array([1, 1, 2, 10]))


def test_progress_callback_errors_propagate(lite):
    vol = (np.arange(3 * 20 * 20) % 251).astype(np.uint8).reshape(3, 20, 20)

    def boom(b, z):
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        medsam_rs.segment_volume(lite, vol, np.array([2, 2, 0, 15, 15, 3]), progress=boom)


# ---- metrics
def test_metrics():
    a = np.zeros((10, 10), np.uint8)
    b = np.zeros((10, 10), bool)
    a[2:6, 2:6] = 1
    b[3:7, 2:6] = True
    assert metrics.dice(a, b) == pytest.approx(2 * 12 / 32)
    assert metrics.iou(a, b) == pytest.approx(12 / 20)
    assert metrics.nsd(a, a) == pytest.approx(1.0)
    assert 0.0 < metrics.nsd(a, b, tolerance=0.5) <= 1.0
    assert np.isnan(metrics.dice(np.zeros((3, 3)), np.zeros((3, 3))))
    with pytest.raises(ValueError, match="same shape"):
        metrics.dice(a, b[:5])
    with pytest.raises(ValueError, match="2-D"):
        metrics.iou(np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError, match="tolerance"):
        metrics.nsd(a, b, tolerance=-1.0)


# ---- checkpoints
def test_checkpoint_round_trip(tmp_path):
    obj = {"model": {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array(3, np.int64)},
           "epoch": 7, "lr": 1e-4, "name": "run", "flags": [True, None, (1, 2.5)],
           "mask": np.array([[True, False]]), "u8": np.arange(4, dtype=np.uint8)}
    path = tmp_path / "ck.pth"
    medsam_rs.save_checkpoint(path, obj)
    back = medsam_rs.load_checkpoint(path)
    assert back["epoch"] == 7 and back["lr"] == 1e-4 and back["name"] == "run"
    assert back["flags"] == [True, None, (1, 2.5)]
    np.testing.assert_array_equal(back["model"]["w"], obj["model"]["w"])
    assert back["model"]["w"].dtype == np.float32 and back["mask"].dtype == np.bool_
    np.testing.assert_array_equal(back["u8"], obj["u8"])
    st = tmp_path / "ck.safetensors"
    medsam_rs.save_checkpoint(st, obj["model"])
    np.testing.assert_array_equal(medsam_rs.load_checkpoint(st)["w"], obj["model"]["w"])
    with pytest.raises(ValueError, match="safetensors"):
        medsam_rs.save_checkpoint(tmp_path / "x.safetensors", {"a": 1})
    with pytest.raises(ValueError, match="cannot be saved"):
        medsam_rs.save_checkpoint(tmp_path / "x.pth", {"a": object()})


def test_checkpoint_torch_load(tmp_path, sam_ckpt):
    torch = pytest.importorskip("torch", reason="torch is not installed: torch.load round trip not checked")
    obj = {"model": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, "epoch": 3}
    path = tmp_path / "ck.pth"
    medsam_rs.save_checkpoint(path, obj)
    t = torch.load(path, map_location="cpu", weights_only=True)
    assert t["epoch"] == 3 and torch.equal(t["model"]["w"], torch.arange(6, dtype=torch.float32).reshape(2, 3))
    sd = torch.load(sam_ckpt, map_location="cpu", weights_only=True)
    back_path = tmp_path / "torch_saved.pth"
    torch.save({"model": sd, "epoch": 1}, back_path)
    back = medsam_rs.load_checkpoint(back_path)
    for k, v in sd.items():
        np.testing.assert_array_equal(back["model"][k], v.numpy())


# ---- preprocessing
def test_normalize_ct_mr():
    ct = np.array([[-1000.0, -160.0, 40.0], [240.0, 500.0, 0.0]])
    out = medsam_rs.normalize_ct_mr(ct, "CT", window_level=40, window_width=400)
    clipped = np.clip(ct, -160, 240)
    want = ((clipped - clipped.min()) / (clipped.max() - clipped.min()) * 255).astype(np.uint8)
    np.testing.assert_array_equal(out, want)
    assert out.shape == ct.shape and out.dtype == np.uint8
    mr = medsam_rs.normalize_ct_mr(np.array([0.0, 1, 2, 3, 100], np.float32), "MR")
    assert mr[0] == 0 and mr[-1] == 255
    with pytest.raises(ValueError, match="modality"):
        medsam_rs.normalize_ct_mr(ct, "PET")
    with pytest.raises(ValueError, match="positive"):
        medsam_rs.normalize_ct_mr(np.zeros(4), "MR")


def test_preprocess_missing_dirs(tmp_path):
    with pytest.raises(FileNotFoundError, match="nii_path"):
        medsam_rs.preprocess_ct_mr(tmp_path / "a", tmp_path / "b", tmp_path / "out")


# ---- training
def test_train_with_progress(tmp_path):
    data = tmp_path / "npy"
    (data / "imgs").mkdir(parents=True)
    (data / "gts").mkdir()
    y, x = np.mgrid[:64, :64]
    for i in range(2):
        gt = (((x - 30 - 4 * i) ** 2 + (y - 28) ** 2) < 150).astype(np.uint8)
        np.save(data / "imgs" / f"s{i}.npy", np.repeat((0.2 + 0.6 * gt)[:, :, None], 3, -1).astype(np.float64))
        np.save(data / "gts" / f"s{i}.npy", gt)
    events = []
    out = medsam_rs.train({"tr_npy_path": str(data), "run_dir": str(tmp_path / "run"), "model_config": SAM_CONFIG,
                           "batch_size": 2, "num_epochs": 1, "max_steps": 1, "bbox_shift": 2},
                          progress=events.append)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "started" and "step" in kinds
    assert out["steps"] == 1 and np.isfinite(out["step_losses"][0])
    assert os.path.exists(out["latest_checkpoint"])
    ck = medsam_rs.load_checkpoint(out["latest_checkpoint"])
    assert "model" in ck
    with pytest.raises(ValueError, match="unknown key"):
        medsam_rs.train({"tr_npy_path": str(data), "epochs": 3})
    with pytest.raises(FileNotFoundError, match="tr_npy_path"):
        medsam_rs.train({"tr_npy_path": str(tmp_path / "none")})


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precision_close_to_f32(lite_ckpt, lite, image, precision):
    # int8 runs only with VNNI (else f32); either way the logits stay close to f32.
    lite.set_image(image)
    want = lite.predict(box=np.array([5, 6, 40, 30]))[2].ravel()
    p = medsam_rs.Predictor(lite_ckpt, config=LITE_CONFIG, precision=precision)
    p.set_image(image)
    got = p.predict(box=np.array([5, 6, 40, 30]))[2].ravel()
    assert np.corrcoef(got, want)[0, 1] > 0.99


def test_unknown_precision_is_a_value_error(lite_ckpt):
    with pytest.raises(ValueError, match="int8"):
        medsam_rs.Predictor(lite_ckpt, config=LITE_CONFIG, precision="fp4")


def test_stubs_cover_the_package():
    import ast

    import medsam_rs as m

    stub = os.path.join(os.path.dirname(m.__file__), "__init__.pyi")
    assert os.path.exists(os.path.join(os.path.dirname(m.__file__), "py.typed"))
    tree = ast.parse(open(stub).read())
    names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    names |= {a.target.id for a in tree.body if isinstance(a, ast.AnnAssign)}
    names |= {al.asname or al.name for n in tree.body if isinstance(n, ast.ImportFrom) for al in n.names}
    assert set(m.__all__) <= names, set(m.__all__) - names
    methods = {f.name for c in tree.body if isinstance(c, ast.ClassDef) and c.name == "Predictor" for f in c.body
               if isinstance(f, ast.FunctionDef)}
    public = {n for n in dir(m.Predictor) if not n.startswith("_")}
    assert public <= methods, public - methods
