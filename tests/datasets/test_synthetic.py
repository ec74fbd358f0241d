"""The synthetic cohort: determinism, label sanity, and that each channel carries the signal it should."""

from __future__ import annotations

import json

import numpy as np
import pytest

from autolabel.datasets import synthetic
from autolabel.datasets.cohort import open_cohort
from autolabel.datasets.format import CHANNELS, LABELS, RING_EDGES
from autolabel.datasets.synthetic import generate_cohort, generate_subject

ROWS, COLS = 64, 128


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """12 subjects at 64x128, opened through the dataset reader (raw units)."""
    c = open_cohort(generate_cohort(tmp_path_factory.mktemp("syn") / "c", seed=5, subjects=12, rows=ROWS, cols=COLS))
    x, area = c.arrays(c.subjects, "full", "area")
    _, ring = c.arrays(c.subjects, "full", "ring")
    return x, area.astype(bool), ring.astype(bool)


def channel(x: np.ndarray, name: str) -> np.ndarray:
    return x[:, CHANNELS.index(name)]


def border(inside: np.ndarray, outside: np.ndarray) -> np.ndarray:
    """Pixels of ``inside`` [N,H,W] with a 4-neighbour in ``outside``."""
    near = np.zeros_like(inside)
    for axis in (1, 2):
        for step in (1, -1):
            near |= np.roll(outside, step, axis=axis)
    return inside & near


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = generate_cohort(tmp_path / "a", seed=1, subjects=4, rows=32, cols=64)
    b = generate_cohort(tmp_path / "b", seed=1, subjects=4, rows=32, cols=64)
    c = generate_cohort(tmp_path / "c", seed=2, subjects=4, rows=32, cols=64)
    assert (a / "manifest.json").read_text() == (b / "manifest.json").read_text()
    for sid in json.loads((a / "manifest.json").read_text())["subjects"]:
        za, zb, zc = (np.load(root / "subjects" / f"{sid}.npz") for root in (a, b, c))
        for key in ("features", "area", "ring"):
            assert za[key].tobytes() == zb[key].tobytes()
        assert za["features"].tobytes() != zc["features"].tobytes()
        assert not np.array_equal(za["area"], zc["area"])


def test_a_subject_depends_on_seed_and_index_only():
    f4, l4 = generate_subject(0, 3, 32, 64)
    f9, l9 = generate_subject(0, 3, 32, 64)
    assert f4.tobytes() == f9.tobytes() and all(np.array_equal(l4[k], l9[k]) for k in LABELS)
    assert not np.array_equal(generate_subject(0, 4, 32, 64)[0], f4)


def test_full_size_subject_shapes():
    feats, labels = generate_subject(0, 0, 128, 256)
    assert feats.shape == (14, 128, 256) and feats.dtype == np.float32 and np.isfinite(feats).all()
    assert labels["area"].shape == (3, 128, 256) and labels["ring"].shape == (5, 128, 256)
    assert labels["area"].dtype == np.uint8


def test_labels_are_sane(cohort):
    _, area, ring = cohort
    assert area.sum(axis=1).max() == 1 and ring.sum(axis=1).max() == 1  # mutually exclusive
    # Rings tile exactly the V1-V3 region (within 7 degrees).
    np.testing.assert_array_equal(ring.any(axis=1), area.any(axis=1))
    half = COLS // 2
    for hemi in (slice(0, half), slice(half, COLS)):
        assert area[..., hemi].any(axis=(2, 3)).all(), "every subject has V1, V2 and V3 in both hemispheres"
        assert ring[..., hemi].any(axis=(2, 3)).all(), "every subject has all five rings in both hemispheres"
    # Sizes vary between subjects (scale, position and warps differ).
    v1 = area[:, 0].sum(axis=(1, 2))
    assert v1.std() / v1.mean() > 0.05


def test_prf_maps_follow_the_labels(cohort):
    x, area, ring = cohort
    px, py = channel(x, "prf_x"), channel(x, "prf_y")
    ecc = np.hypot(px, py)
    # Eccentricity sits in each ring's band (medians: noise rises with eccentricity).
    for i, (lo, hi) in enumerate(zip(RING_EDGES[:-1], RING_EDGES[1:])):
        assert lo <= np.median(ecc[ring[:, i]]) <= hi
    # Contralateral field: left hemisphere (left half) sees x > 0.
    mapped = area.any(axis=1)
    assert np.median(px[:, :, : COLS // 2][mapped[:, :, : COLS // 2]]) > 0
    assert np.median(px[:, :, COLS // 2 :][mapped[:, :, COLS // 2 :]]) < 0
    # Angle reversals on the borders: vertical meridian at V1|V2 and V3's outer edge, horizontal at V2|V3.
    angle = np.degrees(np.arctan2(np.abs(py), np.abs(px)))
    assert np.median(angle[border(area[:, 0], area[:, 1])]) > 65
    assert np.median(angle[border(area[:, 1], area[:, 2])]) < 25
    assert np.median(angle[border(area[:, 2], ~area.any(axis=1))]) > 65
    # pRFs grow up the hierarchy and the fits are better on the mapped region than off it.
    sigma = channel(x, "prf_sigma")
    assert np.median(sigma[area[:, 0]]) < np.median(sigma[area[:, 1]]) < np.median(sigma[area[:, 2]])
    cod = channel(x, "prf_cod")
    on_disc = channel(x, "z") != 0
    assert np.median(cod[mapped]) > 0.3 > np.median(cod[on_disc & ~mapped]) + 0.1


def test_anatomy_carries_weaker_cues(cohort):
    x, area, _ = cohort
    v1, v23 = area[:, 0], area[:, 1] | area[:, 2]
    assert channel(x, "myelin")[v1].mean() > channel(x, "myelin")[v23].mean() + 0.05
    assert channel(x, "thickness")[v1].mean() < channel(x, "thickness")[v23].mean() - 0.1
    assert channel(x, "dwi_OR")[v1].mean() > 2 * channel(x, "dwi_OR")[v23].mean()
    assert channel(x, "dwi_VOF")[area[:, 2]].mean() > 2 * channel(x, "dwi_VOF")[area[:, 0]].mean()
    assert channel(x, "curvature")[v1].mean() > channel(x, "curvature")[v23].mean()
    # ... but noisy: per pixel, myelin alone cannot separate V1 from V2/V3 well.
    m = channel(x, "myelin")
    threshold = np.median(np.concatenate([m[v1], m[v23]]))
    accuracy = ((m[v1] > threshold).mean() + (m[v23] <= threshold).mean()) / 2
    assert 0.6 < accuracy < 0.9


def test_off_cortex_is_zero(cohort):
    x, area, _ = cohort
    off = (x == 0).all(axis=1)
    assert off[:, 0, 0].all() and off.mean() > 0.1  # corners of each hemisphere patch
    assert not (off & area.any(axis=1)).any()


def test_cli_writes_a_cohort(tmp_path, capsys):
    assert synthetic.main([str(tmp_path / "out"), "--subjects", "4", "--rows", "32", "--cols", "64", "--seed", "9"]) == 0
    assert "4 subjects 32x64" in capsys.readouterr().out
    cohort = open_cohort(tmp_path / "out")
    assert cohort.subjects == ["sub000", "sub001", "sub002", "sub003"] and cohort.image_size == (32, 64)
    assert synthetic.main([str(tmp_path / "bad"), "--cols", "65"]) == 2
    assert "even cols" in capsys.readouterr().out
