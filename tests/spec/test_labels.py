"""Cell labels: readable, unchanged for the shipped grids, and never the same for two cells."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

from flows.spec.cells import distinct_parts, expand, label_part
from flows.spec.parse import check_spec, load_spec

ROOT = Path(__file__).resolve().parents[2]

# sha256 of the labels (one per line, in cell order) as the code before this change made them
# (commit eef30d1, 2026-12-01; the demo's since it became 3 lr x 2 bce_weight x 2 inputs,
# 2026-12-04): result folders, Prefect task names and summaries use them.
PUBLISHED = {
    "benson2025": "67601f3fdd496b305225a0aef0e42dfbba676eb8f819b47c22f95eb5547f63da",
    "demo": "19d2dbe0ddf460c63ec81cab91160be15bc92b5e1d12b0bab98c4a3e68a93edb",
}


def test_labels_of_the_shipped_grids_are_unchanged_and_unique():
    for name, digest in PUBLISHED.items():
        labels = [c.label for c in expand(load_spec(ROOT / f"grid-search/{name}.yaml"))]
        assert len(set(labels)) == len(labels)
        assert hashlib.sha256("\n".join(labels).encode()).hexdigest() == digest, name
    benson = [c.label for c in expand(load_spec(ROOT / "grid-search/benson2025.yaml"))]
    assert benson[0] == "resnet18-lr0.00167-g0.8-bce0.5-b2-full-area" and len(benson) == 1800
    assert "resnet34-lr0.00844-g1-bce0.75-b6-anat-ring" in benson
    demo = [c.label for c in expand(load_spec(ROOT / "grid-search/demo.yaml"))]
    assert demo[:3] == ["lr0.002-bce0.5-full", "lr0.004-bce0.5-full", "lr0.008-bce0.5-full"] and len(demo) == 12


def test_levels_that_agree_on_six_digits_get_as_many_as_tell_them_apart():
    assert f"{0.0037500001:g}" == f"{0.00375:g}"  # the collision this guards against
    assert distinct_parts("lr", [0.0037500001, 0.00375, 0.0025]) == ["lr0.0037500001", "lr0.00375", "lr0.0025"]
    assert distinct_parts("lr", [0.1 + 0.2, 0.3]) == ["lr0.30000000000000004", "lr0.3"]  # shortest exact text
    assert distinct_parts("gamma", [0.9, 0.95]) == ["g0.9", "g0.95"]  # no collision: the short form
    assert distinct_parts("device", ["cuda:0", "cuda_0"]) == ["device0", "device1"]  # a label drops ':'
    assert label_part("lr", 1e-5, 0) == "lr1e_05" and label_part("pretrained", True, 0) == "pretrained1"


def test_two_cells_never_share_a_label():
    spec = check_spec({
        "name": "close",
        "hyper": {"lr": [0.0037500001, 0.00375, 0.00375000001], "gamma": [0.9, 0.9000001],
                  "partition": [0.25, {"train": ["a", "b"], "validation": ["c"]}], "seed": [0, 1]},
        "static": {"dataset": {"kind": "synthetic", "subjects": 8, "rows": 32, "cols": 64}},
    })
    cells = expand(spec)
    labels = [c.label for c in cells]
    assert len(cells) == 24 and len(set(labels)) == 24, labels
    assert len({c.id for c in cells}) == 24
    parts = [set(label.split("-")) for label in labels]
    for a, b in itertools.combinations(parts, 2):
        assert a != b
