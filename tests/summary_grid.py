"""Synthetic grids for the summary tests (rows, stats, report, plots, artifacts, summary).

Cells with real options.json, plan.json and metrics.json on disk, Dice planted per factor.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

# Before Prefect is imported anywhere: the ephemeral API must not phone home offline.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from autolabel.options import CellMetrics, CellOptions, Plan, Round  # noqa: E402
from flows.spec.cells import Cell, cell_dir  # noqa: E402
from flows.summary import files as S
from flows.summary import rows as R  # noqa: E402

LABELS = {"area": ["V1", "V2", "V3"], "ring": ["E0", "E1", "E2", "E3", "E4"]}
LRS = [0.00167, 0.0025, 0.00375]
LR_EFFECT = {0.00167: -0.04, 0.0025: 0.04, 0.00375: 0.0}  # planted: 0.0025 is best
BCES = [0.5, 0.67, 0.75]  # planted: no effect
BASE = {("full", "area"): 0.80, ("anat", "area"): 0.62, ("full", "ring"): 0.70, ("anat", "ring"): 0.50}


def make_cell(i: int, lr: float, bce: float, inputs: str, prediction: str) -> Cell:
    hyper = {"lr": lr, "bce_weight": bce, "inputs": inputs, "prediction": prediction}
    label = f"lr{lr:g}-bce{bce:g}-{inputs}-{prediction}-r{i}"
    cid = hashlib.sha256(label.encode()).hexdigest()[:16]
    opts = CellOptions(inputs=inputs, prediction=prediction)
    plan = Plan([Round(lr=lr, bce_weight=bce, num_epochs=2)])
    return Cell(id=cid, label=label, options=opts, plan=plan, hyper=hyper)


def write_cell(grid: Path, cell: Cell, metrics: CellMetrics | None) -> None:
    d = cell_dir(grid, cell)
    d.mkdir(parents=True, exist_ok=True)
    (d / "options.json").write_text(cell.options.model_dump_json())
    (d / "plan.json").write_text(cell.plan.model_dump_json())
    if metrics is not None:
        (d / "metrics.json").write_text(metrics.model_dump_json())


def metrics_for(mean: float, prediction: str, rng: np.random.Generator, status: str = "complete") -> CellMetrics:
    labels = LABELS[prediction]
    spread = np.linspace(0.05, -0.05, len(labels))
    dice = {lab: float(mean + s + rng.normal(0, 0.003)) for lab, s in zip(labels, spread)}
    m = float(np.mean(list(dice.values())))
    return CellMetrics(
        status=status,
        best_val_dice_loss=1 - m + 0.01,
        dice=dice,
        mean_dice=m,
        epochs=12,
        wall_seconds=float(rng.uniform(5, 9)),
        device="cpu",
    )


def summarised_grid(tmp_path_factory) -> tuple:
    """A summarised 108-cell grid: (folder, cells, rows, Summary)."""
    g = tmp_path_factory.mktemp("grid") / "demo"
    cells = build_grid(g)
    rows = R.collect_rows(g, cells, costs={cells[0].id: 0.25})
    result = S.write_summary(g, cells, rows, cap_usd=10.0, spent_usd=0.5)
    return g, cells, rows, result


def build_grid(grid: Path, reps: int = 3, seed: int = 0) -> list[Cell]:
    """3 lr x 3 bce x 2 inputs x 2 prediction x reps cells; lr matters, bce does not."""
    rng = np.random.default_rng(seed)
    cells = []
    for (inputs, prediction), base in BASE.items():
        for lr in LRS:
            for bce in BCES:
                for i in range(reps):
                    c = make_cell(i, lr, bce, inputs, prediction)
                    mean = base + LR_EFFECT[lr] + rng.normal(0, 0.01)
                    write_cell(grid, c, metrics_for(mean, prediction, rng))
                    cells.append(c)
    return cells


def rows_of(values, levels, factor="bce_weight"):
    """In-memory rows of one stratum (full-area) with one factor at the given levels."""
    return [
        {"id": f"{i:04x}", "label": f"c{i}", factor: lv, "inputs": "full", "prediction": "area",
         "status": "complete", "mean_dice": v}  # fmt: skip
        for i, (v, lv) in enumerate(zip(values, levels))
    ]
