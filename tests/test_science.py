"""The scientific check: functional inputs label V1-V3 well, anatomy alone clearly worse.

On a reduced analytic synthetic cohort (32 subjects, 32x64) and two short rounds at batch 2,
``inputs: full`` must reach a validation mean Dice of at least 0.7 for ``area`` and beat
``inputs: anat`` by at least 0.15, as in the published finding. The same check on the fsaverage
cohort (real anatomy, Benson 2014 atlas; 32 subjects, 32x64, the same plan; the session's
``fsaverage_pair``, whose anat cell test_predict also uses): full above anat by at least 0.1, and
not near-perfect.
"""

from __future__ import annotations

import pytest

from autolabel.options import CellMetrics
from tests.conftest import pair_cells, train_pair

# Measured 2026-12-05 on the 2-core machine: full 0.771, anat 0.389, 17 s for both cells (64x128:
# 0.766 vs 0.365 in 53 s, 2026-12-01; at 64 subjects and 4 epochs: 0.862 vs 0.540 in ~110 s).
DATASET = {"kind": "synthetic", "subjects": 32, "rows": 32, "cols": 64}
MIN_FULL_DICE = 0.7
MIN_MARGIN = 0.15
# Measured 2026-12-06: full 0.796, anat 0.602, 18 s for both cells (cohort generation included; at
# 64x128 on 2026-12-05: 0.777 vs 0.564 in 43 s).
MIN_FSAVERAGE_MARGIN = 0.1
MAX_FSAVERAGE_FULL = 0.95  # near-perfect would mean the cohort leaks its labels: fix the cohort then


def mean_dice(cells: dict, name: str, capsys) -> dict[str, float]:
    seconds = float((cells["full"].parent / "seconds.txt").read_text())
    dice = {k: CellMetrics.model_validate_json((c / "metrics.json").read_text()).mean_dice for k, c in cells.items()}
    with capsys.disabled():
        print(f"\nscience ({name}): mean Dice full {dice['full']:.3f}, anat {dice['anat']:.3f} in {seconds:.0f} s")
    return dice


@pytest.mark.slow
def test_functional_inputs_beat_anatomy_alone(tmp_path, capsys):
    train_pair(tmp_path, DATASET)
    dice = mean_dice(pair_cells(tmp_path), "analytic", capsys)
    assert dice["full"] >= MIN_FULL_DICE
    assert dice["full"] - dice["anat"] >= MIN_MARGIN


@pytest.mark.slow
def test_functional_inputs_beat_anatomy_alone_on_the_real_brain(fsaverage_pair, capsys):
    """The same check on the fsaverage cohort: full clearly above anat, and not near-perfect."""
    dice = mean_dice(fsaverage_pair, "fsaverage", capsys)
    assert dice["full"] - dice["anat"] >= MIN_FSAVERAGE_MARGIN
    assert dice["full"] <= MAX_FSAVERAGE_FULL
