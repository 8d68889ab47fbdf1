"""Shared fixtures: the tiny SAM and tiny LiteMedSAM checkpoints of the Rust tests, written to
temporary .pth files through medsam_rs itself, and the expected outputs of make_fixtures.py."""
import json
import os
import sys

import numpy as np
import pytest

import medsam_rs

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
SAM_CONFIG = os.path.join(FIXTURES, "sam", "tiny_sam_config.json")
LITE_CONFIG = os.path.join(FIXTURES, "lite", "tiny_lite_config.json")
sys.path.insert(0, FIXTURES)
from lite_det import det_value  # noqa: E402  (tests/fixtures/lite_det.py)


@pytest.fixture(scope="session")
def expected():
    with np.load(os.path.join(HERE, "fixtures", "expected.npz")) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="session")
def sam_ckpt(tmp_path_factory):
    w = medsam_rs.load_checkpoint(os.path.join(FIXTURES, "sam", "tiny_sam.safetensors"))
    sd = {k[2:]: v for k, v in w.items() if k.startswith("w.")}
    path = tmp_path_factory.mktemp("ckpt") / "tiny_sam.pth"
    medsam_rs.save_checkpoint(path, sd)
    return str(path)


@pytest.fixture(scope="session")
def lite_ckpt(tmp_path_factory):
    with open(os.path.join(HERE, "fixtures", "tiny_lite_keys.json")) as f:
        keys = json.load(f)
    sd = {}
    for name, shape, dtype in keys:
        v = det_value(name, tuple(shape))
        sd[name] = v.astype(np.int64) if dtype == "int64" else v
    path = tmp_path_factory.mktemp("ckpt") / "tiny_lite.pth"
    medsam_rs.save_checkpoint(path, sd)
    return str(path)


def close(actual, want, what, atol=1e-4):
    actual, want = np.asarray(actual), np.asarray(want)
    assert actual.shape == want.shape, f"{what}: shape {actual.shape} != {want.shape}"
    err = float(np.max(np.abs(actual.astype(np.float64) - want))) if want.size else 0.0
    assert err <= atol, f"{what}: max |diff| {err:.3g} > {atol}"


def masks_equal(actual, want, near, what):
    """Equal except where the reference logit is within 1e-3 of the threshold."""
    actual, want = np.asarray(actual).astype(bool), np.asarray(want).astype(bool)
    assert actual.shape == want.shape, f"{what}: shape {actual.shape} != {want.shape}"
    bad = (actual != want) & ~np.asarray(near).astype(bool)
    assert not bad.any(), f"{what}: {int(bad.sum())} of {bad.size} mask pixels differ"
