"""Shared fixtures: the tiny SAM and tiny LiteMedSAM checkpoints of the Rust tests, written to
temporary .pth files through medsam_rs itself, and the expected outputs of make_fixtures.py."""
import json
import os

import numpy as np
import pytest

import medsam_rs

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
SAM_CONFIG = os.path.join(FIXTURES, "sam", "tiny_sam_config.json")
LITE_CONFIG = os.path.join(FIXTURES, "lite", "tiny_lite_config.json")
M64 = (1 << 64) - 1


def fnv1a64(s):
    h = 0xCBF29CE484222325
    for b in s.encode():
        h = ((h ^ b) * 0x100000001B3) & M64
    return h


def det_value(name, shape):
    """tests/fixtures/make_lite_fixtures.py's name-seeded weights (SplitMix64 → f32)."""
    n = int(np.prod(shape)) if len(shape) else 1
    with np.errstate(over="ignore"):
        i = np.arange(1, n + 1, dtype=np.uint64)
        z = np.uint64(fnv1a64(name)) + i * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(40)).astype(np.float32) / np.float32(16777216.0) * np.float32(2.0) - np.float32(1.0)
    f = np.float32
    if name.endswith("num_batches_tracked"):
        v = np.zeros(n, np.float32)
    elif name.endswith("running_var"):
        v = f(1.0) + f(0.5) * u
    elif name.endswith("running_mean"):
        v = f(0.1) * u
    elif name.endswith("attention_biases"):
        v = f(0.5) * u
    elif name.endswith("positional_encoding_gaussian_matrix"):
        v = u
    elif len(shape) <= 1 and name.endswith("weight"):
        v = f(1.0) + f(0.2) * u
    elif len(shape) <= 1:
        v = f(0.1) * u
    else:
        fan = int(np.prod(shape[1:]))
        v = u * (f(1.0) / np.sqrt(f(fan)))
    return v.astype(np.float32).reshape(shape)


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
