"""The fsaverage cohort: determinism, caching, sizes, and what its channels may and may not show."""

from __future__ import annotations

import numpy as np

from autolabel.datasets import fsaverage
from autolabel.datasets.format import CHANNELS
from autolabel.datasets.sources import open_dataset
from autolabel.options import CellOptions, FsaverageDataset

ROWS, COLS = 64, 128


def test_same_seed_same_subject_bit_for_bit_and_seeds_differ():
    a_feats, a_labels = fsaverage.generate_subject(0, 3, ROWS, COLS)
    b_feats, b_labels = fsaverage.generate_subject(0, 3, ROWS, COLS)
    assert np.array_equal(a_feats, b_feats) and all(np.array_equal(a_labels[k], b_labels[k]) for k in a_labels)
    c_feats, c_labels = fsaverage.generate_subject(1, 3, ROWS, COLS)
    assert not np.array_equal(a_feats, c_feats) and not np.array_equal(a_labels["area"], c_labels["area"])


def test_the_dataset_kind_is_cached_and_has_the_documented_sizes(tmp_path):
    spec = CellOptions.model_validate({"dataset": {"kind": "fsaverage", "subjects": 5, "rows": 32, "cols": 64}}).dataset
    assert isinstance(spec, FsaverageDataset)
    cohort = open_dataset(spec, tmp_path)
    assert cohort.root.name == f"fsaverage-s0-n5-32x64-v{fsaverage.GENERATOR_VERSION}"
    stamp = (cohort.root / "manifest.json").stat().st_mtime_ns
    again = open_dataset(spec, tmp_path)
    assert again.root == cohort.root and (again.root / "manifest.json").stat().st_mtime_ns == stamp
    assert len(cohort.subjects) == 5 and cohort.channels == CHANNELS and cohort.image_size == (32, 64)
    x, y = cohort.arrays(cohort.subjects, "full", "ring")
    assert x.shape == (5, 14, 32, 64) and y.shape == (5, 5, 32, 64) and np.isfinite(x).all()


def test_subjects_vary_and_v1_v3_fill_far_more_than_15_percent():
    areas = [fsaverage.generate_subject(0, i, ROWS, COLS)[1]["area"] for i in range(6)]
    share = [a.any(0).mean() for a in areas]
    v1 = [int(a[0].sum()) for a in areas]
    assert min(share) > 0.25, share
    assert max(v1) > 1.2 * min(v1), v1  # V1-V3 size varies between subjects
    for a in areas:
        assert a.sum(0).max() == 1  # areas are exclusive


def test_prf_maps_hold_values_everywhere_and_never_copy_the_labels():
    feats, labels = fsaverage.generate_subject(0, 0, ROWS, COLS)
    outside = ~labels["area"].any(0)
    for name in ("prf_x", "prf_y", "prf_sigma"):
        channel = feats[CHANNELS.index(name)]
        assert (channel[outside] != 0).mean() > 0.99, f"{name}: a fill off the visual areas"
    # Fit quality is no label: it stays high beyond V1-V3 (the atlas's other areas) and varies inside.
    cod = feats[CHANNELS.index("prf_cod")]
    assert (cod[outside] > 0.3).mean() > 0.2
    assert cod[~outside].std() > 0.05


def test_anatomy_is_the_real_brain_v1_thinner_and_more_myelinated():
    thick, myelin = [], []
    for i in range(4):
        feats, labels = fsaverage.generate_subject(0, i, ROWS, COLS)
        v1, v2 = labels["area"][0].astype(bool), labels["area"][1].astype(bool)
        thick.append((feats[CHANNELS.index("thickness")][v1].mean(), feats[CHANNELS.index("thickness")][v2].mean()))
        myelin.append((feats[CHANNELS.index("myelin")][v1].mean(), feats[CHANNELS.index("myelin")][v2].mean()))
    assert all(a < b for a, b in thick), thick
    assert all(a > b for a, b in myelin), myelin
