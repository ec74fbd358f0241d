"""Tests of flows/summary/files.py: summary.csv/.json/.md on disk, and best/.

    .venv/bin/python -m pytest -q tests/test_summary.py

Rows, statistics, the report, plots and artifacts have their own files (test_rows.py,
test_stats.py, test_report.py, test_plots.py, test_artifacts.py).
"""

from __future__ import annotations

import csv
import json
import stat

import numpy as np

from flows.spec.cells import CellOutcome, cell_dir
from flows.summary import files as S
from flows.summary import rows as R
from tests.summary_grid import make_cell, metrics_for, write_cell


def test_csv_has_expected_columns_and_exact_numbers(grid):
    g, cells, rows, _ = grid
    with open(g / "summary.csv") as f:
        read = list(csv.DictReader(f))
    expected = ["id", "label", "lr", "bce_weight", "inputs", "prediction", "status", "mean_dice",
                "dice_V1", "dice_V2", "dice_V3", "dice_E0", "dice_E1", "dice_E2", "dice_E3", "dice_E4",
                "best_val_dice_loss", "epochs", "duration_s", "cost_usd", "message"]  # fmt: skip
    assert list(read[0]) == expected
    assert len(read) == len(cells)
    for r, back in zip(rows, read):
        assert float(back["mean_dice"]) == r["mean_dice"]  # shortest repr round-trips exactly
        assert float(back["lr"]) == r["lr"]
    area = next(b for b in read if b["prediction"] == "area")
    assert area["dice_E0"] == ""


def test_summary_json_holds_rows_counts_best_effects_spend(grid):
    g, cells, rows, result = grid
    data = json.loads((g / "summary.json").read_text())
    assert data["rows"] == json.loads(json.dumps(rows))
    assert data["counts"] == {"complete": len(cells)}
    assert data["cap_usd"] == 10.0 and data["spent_usd"] == 0.5
    assert {b["stratum"] for b in data["best"]} == {"full-area", "anat-area", "full-ring", "anat-ring"}
    assert {e["factor"] for e in data["effects"]} == {"lr", "bce_weight", "inputs", "prediction"}
    lr = next(e for e in data["effects"] if e["factor"] == "lr" and e["stratum"] == "all")
    assert lr["partial_eta_sq"] > 0.5 and lr["margin"]["best_level"] == 0.0025 and lr["interaction"]["p"] > 0
    assert "markdown" not in data


def test_outcomes_counts_and_spend_reach_the_files(tmp_path):
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
    s = S.write_summary(tmp_path, [a, b, c, d, e], rows, cap_usd=2.0)
    assert s.counts == {"complete": 1, "failed": 2, "skipped": 1, "pending": 1}
    assert s.spent_usd == 1.5  # None -> sum of the rows' costs
    assert "1 x skipped: cost cap" in s.markdown
    assert "$1.50 of the $2.00 cap (75%)" in s.markdown


def test_best_holds_the_winning_cells_files(grid):
    g, cells, rows, result = grid
    for stratum in ("full-area", "anat-area", "full-ring", "anat-ring"):
        inputs, prediction = stratum.split("-")
        pool = [r for r in rows if r["inputs"] == inputs and r["prediction"] == prediction]
        winner = max(pool, key=lambda r: r["mean_dice"])
        d = g / "best" / stratum
        assert json.loads((d / "best.json").read_text())["id"] == winner["id"]
        src = g / "cells" / winner["id"]
        assert (d / "options.json").read_bytes() == (src / "options.json").read_bytes()
        assert (d / "plan.json").read_bytes() == (src / "plan.json").read_bytes()
        assert winner["id"] in (d / "README.md").read_text()
        # How a lab labels its own subjects with it: the winner, and its stratum's top 3 averaged.
        top3 = sorted(pool, key=lambda r: -r["mean_dice"])[:3]
        one = f"python -m autolabel.predict SUBJECTS_DIR --model {d} --out labels-{stratum}"
        three = " ".join(f"--model {g / 'cells' / r['id']}" for r in top3)
        for text in ((d / "README.md").read_text(), result.markdown):
            assert one in text and f"SUBJECTS_DIR {three} --out labels-{stratum}-top3" in text
    assert len(result.best) == 4
    # best/ gets a plain mkdir's permissions (0777 less the umask), not its staging folder's 0700.
    from autolabel.celldir import UMASK

    assert stat.S_IMODE((g / "best").stat().st_mode) == 0o777 & ~UMASK


def test_best_ties_and_stale_dirs(tmp_path):
    rng = np.random.default_rng(2)
    a, b = make_cell(0, 0.0025, 0.5, "full", "area"), make_cell(1, 0.0025, 0.5, "full", "area")
    r = make_cell(2, 0.0025, 0.5, "anat", "ring")
    m = metrics_for(0.8, "area", rng)
    write_cell(tmp_path, a, m.model_copy(update={"best_val_dice_loss": 0.30}))
    write_cell(tmp_path, b, m.model_copy(update={"best_val_dice_loss": 0.20}))  # same Dice, lower loss
    write_cell(tmp_path, r, metrics_for(0.5, "ring", rng))
    S.write_summary(tmp_path, [a, b, r], R.collect_rows(tmp_path, [a, b, r]))
    assert json.loads((tmp_path / "best/full-area/best.json").read_text())["id"] == b.id
    assert (tmp_path / "best/anat-ring/options.json").exists()
    # b fails on a rerun and anat-ring is dropped: neither may linger in best/.
    (cell_dir(tmp_path, b) / "metrics.json").unlink()
    S.write_summary(tmp_path, [a, b], R.collect_rows(tmp_path, [a, b], {b.id: CellOutcome("failed", "killed")}))
    assert json.loads((tmp_path / "best/full-area/best.json").read_text())["id"] == a.id
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["full-area"]
    assert not list(tmp_path.glob(".best*"))
