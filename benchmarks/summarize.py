"""Benchmark: re-summarise a finished 1800-cell grid (the published grid's size). Goal: < 20 s.

    .venv/bin/python benchmarks/summarize.py               # temp dir, removed afterwards
    .venv/bin/python benchmarks/summarize.py --keep /tmp/g  # keep the grid and its summary

It writes a synthetic grid (options.json, plan.json, a plausible metrics.json and a 60-epoch
history.csv per cell, all complete), then times, in the same run:

- baseline: reading and parsing the 1800 metrics.json files, nothing else;
- collect_rows + write_summary: what a rerun of a finished grid does (CSV, JSON,
  markdown, the type II ANOVAs and factor x stratum tests, one PNG per factor and the
  learning curves, best/).

The files were just written, so they are in the page cache, as on a rerun right after a grid.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autolabel.options import CellMetrics, CellOptions, Plan, Round  # noqa: E402
from flows.spec.cells import Cell, cell_dir  # noqa: E402
from flows.summary import files as summary
from flows.summary import report  # noqa: E402
from flows.summary import rows as rows_mod

GOAL_S = 20.0
# The published grid (Benson, Song et al. 2025): 2 x 5 x 5 x 3 x 3 x 2 x 2 = 1800 cells.
GRID = {
    "base_model": ["resnet18", "resnet34"],
    "lr": [0.00167, 0.0025, 0.00375, 0.00562, 0.00844],
    "gamma": [0.80, 0.85, 0.90, 0.95, 1.00],
    "bce_weight": [0.50, 0.67, 0.75],
    "batch_size": [2, 4, 6],
    "inputs": ["full", "anat"],
    "prediction": ["area", "ring"],
}
LABELS = {"area": ["V1", "V2", "V3"], "ring": ["E0", "E1", "E2", "E3", "E4"]}
# Plausible levels: functional inputs help a lot, rings are harder, lr has an optimum,
# gamma a mild trend, bce_weight and batch size nothing.
BASE = {("full", "area"): 0.82, ("anat", "area"): 0.66, ("full", "ring"): 0.70, ("anat", "ring"): 0.52}
LR_EFFECT = {0.00167: -0.010, 0.0025: 0.008, 0.00375: 0.006, 0.00562: -0.004, 0.00844: -0.020}


def make_cell(h: dict) -> Cell:
    """A cell as the flow builds one: the published per-cell 3-round plan."""
    options = CellOptions(
        base_model=h["base_model"], inputs=h["inputs"], prediction=h["prediction"], batch_size=h["batch_size"], until=2
    )
    plan = Plan(
        [
            Round(lr=h["lr"] * f, gamma=h["gamma"], bce_weight=h["bce_weight"] * w, num_epochs=10)
            for f, w in ((1, 1), (2 / 3, 0.5), (1 / 3, 0))
        ]
    )
    text = options.model_dump_json() + plan.model_dump_json()
    label = "-".join(f"{v}" for v in h.values())
    return Cell(id=hashlib.sha256(text.encode()).hexdigest()[:16], label=label, options=options, plan=plan, hyper=h)


def fake_metrics(h: dict, rng: np.random.Generator) -> CellMetrics:
    mean = BASE[h["inputs"], h["prediction"]] + LR_EFFECT[h["lr"]] + 0.02 * (h["gamma"] - 0.9)
    mean += 0.005 * (h["base_model"] == "resnet34") + rng.normal(0, 0.012)
    labels = LABELS[h["prediction"]]
    offsets = np.linspace(0.06, -0.06, len(labels))  # V1 is easier than V3, E0 than E4
    dice = {lab: float(mean + off + rng.normal(0, 0.004)) for lab, off in zip(labels, offsets)}
    m = float(np.mean(list(dice.values())))
    return CellMetrics(
        status="complete",
        best_val_dice_loss=1 - m + float(rng.normal(0.01, 0.002)),
        dice=dice,
        mean_dice=m,
        epochs=60,
        wall_seconds=float(rng.uniform(25, 45)),
        device="cuda:0",
        train_images=8700,
        train_images_per_second=300.0,
    )


def fake_history(rng: np.random.Generator, repeats: int = 2, epochs: int = 30) -> str:
    """history.csv as the trainer writes it: 2 repeats x 3 rounds of 10 epochs (the published plan)."""
    columns = ("repeat", "round", "epoch", "lr", "batch_size", "train_bce", "train_dice", "train_loss",
               "val_bce", "val_dice", "val_loss", "val_mean_dice", "seconds")  # autolabel.train.HISTORY_COLUMNS
    lines = [",".join(columns)]
    for rep in range(repeats):
        for ep in range(epochs):
            loss = 1.0 * np.exp(-ep / 8) + 0.25 + rng.normal(0, 0.01)
            dice = 0.7 * (1 - np.exp(-(ep + 1) / 6))
            values = (rep, ep // 10, ep % 10 + 1, 0.0025, 4, 0.1, 0.2, loss, 0.1, 0.2, loss + 0.05, dice, 0.6)
            lines.append(",".join(f"{v:.5g}" if isinstance(v, float) else str(v) for v in values))
    return "\n".join(lines) + "\n"


def build_grid(grid_dir: Path) -> list[Cell]:
    rng = np.random.default_rng(0)
    cells = []
    for values in itertools.product(*GRID.values()):
        h = dict(zip(GRID, values))
        cell = make_cell(h)
        d = cell_dir(grid_dir, cell)
        d.mkdir(parents=True)
        (d / "options.json").write_text(cell.options.model_dump_json(indent=2))
        (d / "plan.json").write_text(cell.plan.model_dump_json(indent=2))
        (d / "metrics.json").write_text(fake_metrics(h, rng).model_dump_json(indent=2))
        (d / "history.csv").write_text(fake_history(rng))
        cells.append(cell)
    return cells


def read_all(grid_dir: Path, cells: list[Cell]) -> int:
    """The baseline: open and parse every metrics.json, nothing more."""
    return sum(len(json.loads((cell_dir(grid_dir, c) / "metrics.json").read_bytes())) for c in cells)


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def run(grid_dir: Path) -> dict[str, float]:
    cells, t_build = timed(build_grid, grid_dir)
    print(f"built {len(cells)} cells in {t_build:.1f} s under {grid_dir}")
    _, t_base = timed(read_all, grid_dir, cells)
    costs = {c.id: 0.0114 for c in cells}  # ~40 s on a g5.xlarge at $1.006/h
    rows, t_rows = timed(rows_mod.collect_rows, grid_dir, cells, None, costs)
    result, t_write = timed(summary.write_summary, grid_dir, cells, rows, cap_usd=50.0, spent_usd=20.5)
    _, t_noplot = timed(summary.write_summary, grid_dir, cells, rows, cap_usd=50.0, spent_usd=20.5, plots=False)
    total = t_rows + t_write
    print(f"baseline: read+parse {len(cells)} metrics.json     {t_base:6.2f} s")
    print(f"collect_rows                               {t_rows:6.2f} s")
    print(f"write_summary (incl. {len(result.plots)} plots)              {t_write:6.2f} s "
          f"(without plots {t_noplot:.2f} s)")  # fmt: skip
    print(f"re-summarise total                         {total:6.2f} s = {total / t_base:.0f} x baseline; "
          f"goal < {GOAL_S:.0f} s: {'met' if total < GOAL_S else 'MISSED'}")  # fmt: skip
    for e in result.effects:
        if e.stratum == "all":
            print("  " + report.effect_sentence(e))
    return {"baseline_s": t_base, "collect_rows_s": t_rows, "write_summary_s": t_write, "total_s": total}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, help="write the grid here (must not exist) and keep it")
    args = ap.parse_args(argv)
    if args.keep:
        if args.keep.exists():
            print(f"{args.keep}: already exists; pass a new folder to --keep", file=sys.stderr)
            return 2
        run(args.keep)
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="summarize-bench-"))
    try:
        run(tmp / "benson2025")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
