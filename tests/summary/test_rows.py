"""Tests of flows/summary/rows.py: rows equal metrics.json; statuses from outcomes; levels; winners.

    .venv/bin/python -m pytest -q tests/test_rows.py
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from flows.spec.cells import CellOutcome, cell_dir
from flows.summary import rows as R
from tests.summary_grid import build_grid, make_cell, metrics_for, write_cell


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    g = tmp_path_factory.mktemp("grid") / "demo"
    cells = build_grid(g)
    return g, cells, R.collect_rows(g, cells, costs={cells[0].id: 0.25})


def test_rows_equal_each_cells_metrics(built):
    g, cells, rows = built
    assert [r["id"] for r in rows] == [c.id for c in cells]
    for r in rows:
        m = json.loads((g / "cells" / r["id"] / "metrics.json").read_text())
        assert r["status"] == m["status"] == "complete"
        assert r["mean_dice"] == m["mean_dice"]
        assert r["best_val_dice_loss"] == m["best_val_dice_loss"]
        assert r["epochs"] == m["epochs"]
        assert r["duration_s"] == m["wall_seconds"]
        for lab, v in m["dice"].items():
            assert r[f"dice_{lab}"] == v
    assert rows[0]["cost_usd"] == 0.25 and rows[1]["cost_usd"] == 0.0


def test_outcomes_costs_and_unreadable_metrics(tmp_path):
    rng = np.random.default_rng(1)
    a, b, c, d, e = (make_cell(i, 0.0025, 0.5, "full", "area") for i in range(5))
    write_cell(tmp_path, a, metrics_for(0.8, "area", rng))
    write_cell(tmp_path, b, None)
    write_cell(tmp_path, c, None)
    write_cell(tmp_path, d, metrics_for(0.3, "area", rng, status="diverged").model_copy(update={"message": "NaN"}))
    write_cell(tmp_path, e, None)
    (cell_dir(tmp_path, e) / "metrics.json").write_text("{not json")
    outcomes = {a.id: CellOutcome("failed", "stale outcome"), b.id: CellOutcome("skipped", "cost cap"),
                d.id: CellOutcome("failed", "diverged (exit 3)", 3)}
    rows = R.collect_rows(tmp_path, [a, b, c, d, e], outcomes, {a.id: 1.5})
    by = {r["id"]: r for r in rows}
    assert by[a.id]["status"] == "complete"  # a complete metrics.json wins over any outcome
    assert (by[b.id]["status"], by[b.id]["message"]) == ("skipped", "cost cap")
    assert by[b.id]["mean_dice"] is None and by[b.id]["epochs"] is None
    assert by[c.id]["status"] == "pending"
    assert (by[d.id]["status"], by[d.id]["message"]) == ("failed", "diverged (exit 3)")
    assert by[e.id]["status"] == "failed" and "metrics.json" in by[e.id]["message"]
    assert by[a.id]["cost_usd"] == 1.5
    assert R.count_statuses(rows) == {"complete": 1, "failed": 2, "skipped": 1, "pending": 1}
    assert list(R.count_statuses(rows)) == ["complete", "failed", "skipped", "pending"]
    assert [r["id"] for r in R.scored(rows)] == [a.id]


def test_levels_factors_and_names(built):
    _, _, rows = built
    assert R.factor_columns(rows) == ["lr", "bce_weight", "inputs", "prediction"]
    assert R.varying_factors(rows[:1]) == []
    assert R.sorted_levels(rows, "lr") == [0.00167, 0.0025, 0.00375]  # numeric, not text, order
    assert R.sorted_levels(rows, "inputs") == ["anat", "full"]
    assert R.level_key([128, 256]) == "[128, 256]" and R.fmt_level(0.0025) == "0.0025"
    assert R.safe_name("full/area x") == "full_area_x" and R.safe_name("///") == "factor"


def test_best_cells_one_per_stratum_ties_to_lower_loss():
    base = {"status": "complete", "inputs": "full", "prediction": "area", "mean_dice": 0.8}
    rows = [
        {**base, "id": "a", "best_val_dice_loss": 0.3},
        {**base, "id": "b", "best_val_dice_loss": 0.2},
        {**base, "id": "c", "prediction": "ring", "mean_dice": 0.5, "best_val_dice_loss": None},
        {**base, "id": "d", "mean_dice": None, "status": "failed"},
    ]
    assert [r["id"] for r in R.best_cells(rows)] == ["b", "c"]
