"""The scientific check: functional inputs label V1-V3 well, anatomy alone clearly worse.

On a reduced analytic synthetic cohort (32 subjects, 64x128) and a short plan at batch 2,
``inputs: full`` must reach a validation mean Dice of at least 0.7 for ``area`` and
beat ``inputs: anat`` by at least 0.15, as in the published finding. The same check on the
fsaverage cohort (real anatomy, Benson 2014 atlas; 32 subjects, 64x128, 3 epochs): full above
anat by at least 0.1, and not near-perfect.
"""

from __future__ import annotations

import json
import time

import pytest

from autolabel import train
from autolabel.control import RunControl
from autolabel.options import CellMetrics

DATASET = {"kind": "synthetic", "subjects": 32, "rows": 64, "cols": 128}
# Batch 2 (a grid value) gives twice the steps per epoch of batch 4 at the same CPU cost.
# The fsaverage check's plan and size. Measured 2026-12-01 on the 2-core machine (busy): full
# 0.766, anat 0.365, 53 s for both cells; at 64 subjects and 4 epochs: 0.862 vs 0.540 in ~110 s.
PLAN = [{"lr": 0.003, "bce_weight": 0.75, "num_epochs": 2}, {"lr": 0.001, "bce_weight": 0.0, "num_epochs": 1}]
MIN_FULL_DICE = 0.7
MIN_MARGIN = 0.15


def full_and_anat_dice(tmp_path, dataset: dict, name: str, capsys) -> dict[str, float]:
    """Train a full-input and an anatomy-only cell (area labels, batch 2, CPU); their mean validation Dice."""
    cells = {}
    for inputs in ("full", "anat"):
        cell = tmp_path / inputs
        cell.mkdir()
        options = {"inputs": inputs, "prediction": "area", "batch_size": 2, "device": "cpu", "dataset": dataset}
        (cell / "options.json").write_text(json.dumps(options))
        (cell / "plan.json").write_text(json.dumps(PLAN))
        cells[inputs] = cell
    started = time.perf_counter()
    assert train.train_cells([str(c) for c in cells.values()], RunControl()) == 0
    seconds = time.perf_counter() - started
    dice = {k: CellMetrics.model_validate_json((c / "metrics.json").read_text()).mean_dice for k, c in cells.items()}
    with capsys.disabled():
        print(f"\nscience ({name}): mean Dice full {dice['full']:.3f}, anat {dice['anat']:.3f} in {seconds:.0f} s")
    return dice


@pytest.mark.slow
def test_functional_inputs_beat_anatomy_alone(tmp_path, capsys):
    dice = full_and_anat_dice(tmp_path, DATASET, "analytic", capsys)
    assert dice["full"] >= MIN_FULL_DICE
    assert dice["full"] - dice["anat"] >= MIN_MARGIN


FSAVERAGE = {"kind": "fsaverage", "subjects": 32, "rows": 64, "cols": 128}
# Two rounds, 3 epochs, as the analytic check. Measured 2026-12-01 on the 2-core
# machine: full 0.751, anat 0.565, 69 s for both cells (cohort generation included).
MIN_FSAVERAGE_MARGIN = 0.1
MAX_FSAVERAGE_FULL = 0.95  # near-perfect would mean the cohort leaks its labels: fix the cohort then


@pytest.mark.slow
def test_functional_inputs_beat_anatomy_alone_on_the_real_brain(tmp_path, capsys):
    """The same check on the fsaverage cohort: full clearly above anat, and not near-perfect."""
    dice = full_and_anat_dice(tmp_path, FSAVERAGE, "fsaverage", capsys)
    assert dice["full"] - dice["anat"] >= MIN_FSAVERAGE_MARGIN
    assert dice["full"] <= MAX_FSAVERAGE_FULL
