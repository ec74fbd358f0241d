"""Tests of flows/summary.py: rows equal metrics.json, files, best/, effects, markdown, artifacts.

    .venv/bin/python -m pytest -q tests/test_summary.py
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

# Before Prefect is imported anywhere: the ephemeral API must not phone home offline.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


from autolabel.options import CellMetrics, CellOptions, Plan, Round  # noqa: E402
from flows import summary as S  # noqa: E402
from flows.cells import Cell, cell_dir  # noqa: E402

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


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A summarised 108-cell grid, shared by the read-only tests below."""
    g = tmp_path_factory.mktemp("grid") / "demo"
    cells = build_grid(g)
    rows = S.collect_rows(g, cells, costs={cells[0].id: 0.25})
    result = S.write_summary(g, cells, rows, cap_usd=10.0, spent_usd=0.5)
    return g, cells, rows, result


# ----------------------------------------------------------------------------- rows


def test_rows_equal_each_cells_metrics(grid):
    g, cells, rows, _ = grid
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
    assert "markdown" not in data


def test_outcomes_costs_and_unreadable_metrics(tmp_path):
    rng = np.random.default_rng(1)
    a, b, c, d, e = (make_cell(i, 0.0025, 0.5, "full", "area") for i in range(5))
    write_cell(tmp_path, a, metrics_for(0.8, "area", rng))
    write_cell(tmp_path, b, None)
    write_cell(tmp_path, c, None)
    write_cell(tmp_path, d, metrics_for(0.3, "area", rng, status="diverged").model_copy(update={"message": "NaN"}))
    write_cell(tmp_path, e, None)
    (cell_dir(tmp_path, e) / "metrics.json").write_text("{not json")
    outcomes = {a.id: "failed: stale outcome", b.id: "skipped: cost cap", d.id: "failed: diverged (exit 3)"}
    rows = S.collect_rows(tmp_path, [a, b, c, d, e], outcomes, {a.id: 1.5})
    by = {r["id"]: r for r in rows}
    assert by[a.id]["status"] == "complete"  # a complete metrics.json wins over any outcome
    assert (by[b.id]["status"], by[b.id]["message"]) == ("skipped", "cost cap")
    assert by[b.id]["mean_dice"] is None and by[b.id]["epochs"] is None
    assert by[c.id]["status"] == "pending"
    assert (by[d.id]["status"], by[d.id]["message"]) == ("failed", "diverged (exit 3)")
    assert by[e.id]["status"] == "failed" and "metrics.json" in by[e.id]["message"]
    assert by[a.id]["cost_usd"] == 1.5
    s = S.write_summary(tmp_path, [a, b, c, d, e], rows, cap_usd=2.0)
    assert s.counts == {"complete": 1, "failed": 2, "skipped": 1, "pending": 1}
    assert s.spent_usd == 1.5  # None -> sum of the rows' costs
    assert "1 x skipped: cost cap" in s.markdown
    assert "$1.50 of the $2.00 cap (75%)" in s.markdown


# ----------------------------------------------------------------------------- best/ and plots


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
    assert len(result.best) == 4


def test_best_ties_and_stale_dirs(tmp_path):
    rng = np.random.default_rng(2)
    a, b = make_cell(0, 0.0025, 0.5, "full", "area"), make_cell(1, 0.0025, 0.5, "full", "area")
    r = make_cell(2, 0.0025, 0.5, "anat", "ring")
    m = metrics_for(0.8, "area", rng)
    write_cell(tmp_path, a, m.model_copy(update={"best_val_dice_loss": 0.30}))
    write_cell(tmp_path, b, m.model_copy(update={"best_val_dice_loss": 0.20}))  # same Dice, lower loss
    write_cell(tmp_path, r, metrics_for(0.5, "ring", rng))
    S.write_summary(tmp_path, [a, b, r], S.collect_rows(tmp_path, [a, b, r]))
    assert json.loads((tmp_path / "best/full-area/best.json").read_text())["id"] == b.id
    assert (tmp_path / "best/anat-ring/options.json").exists()
    # b fails on a rerun and anat-ring is dropped: neither may linger in best/.
    (cell_dir(tmp_path, b) / "metrics.json").unlink()
    S.write_summary(tmp_path, [a, b], S.collect_rows(tmp_path, [a, b], {b.id: "failed: killed"}))
    assert json.loads((tmp_path / "best/full-area/best.json").read_text())["id"] == a.id
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["full-area"]
    assert not list(tmp_path.glob(".best*"))


def test_plots_one_png_per_varying_factor(grid):
    g, _, _, result = grid
    names = sorted(Path(p).name for p in result.plots)
    assert names == ["dice_by_bce_weight.png", "dice_by_inputs.png", "dice_by_lr.png", "dice_by_prediction.png"]
    for p in result.plots:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Path(p).stat().st_size > 5000


# ----------------------------------------------------------------------------- effects


def pooled(result, factor):
    return next(e for e in result.effects if e.factor == factor and e.stratum == "all")


def test_effects_find_the_planted_effect_and_none_for_the_null(grid):
    _, _, _, result = grid
    lr, bce = pooled(result, "lr"), pooled(result, "bce_weight")
    assert lr.verdict == "matters" and lr.p < 1e-6 and lr.eta_sq > 0.5 and lr.best_level == 0.0025
    assert lr.test == "ANOVA blocked by inputs x prediction" and lr.n == 108 and lr.df == (2, 102)
    assert bce.verdict == "no detectable effect" and bce.p > 0.05 and bce.eta_sq < 0.05
    per_stratum = [e for e in result.effects if e.factor == "lr" and e.stratum != "all"]
    assert sorted(e.stratum for e in per_stratum) == ["anat-area", "anat-ring", "full-area", "full-ring"]
    assert all(e.test == "one-way ANOVA" and e.n == 27 and e.p_perm is not None for e in per_stratum)
    assert all(e.verdict == "matters" and e.p_perm < 0.01 for e in per_stratum)
    assert [lv.n for lv in lr.levels] == [36, 36, 36] and [lv.level for lv in lr.levels] == LRS
    # inputs is blocked by prediction only.
    assert pooled(result, "inputs").test == "ANOVA blocked by prediction"


def test_blocked_anova_with_one_block_equals_f_oneway():
    from scipy.stats import f_oneway

    rng = np.random.default_rng(3)
    y = rng.normal(0, 1, 30) + np.repeat([0.0, 0.5, 1.0], 10)
    lev = np.repeat([0, 1, 2], 10)
    f, df, p, eta = S._blocked_anova(y, lev, np.zeros(30, dtype=int))
    ref = f_oneway(y[:10], y[10:20], y[20:])
    assert f == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue) and df == (2, 27)
    f1, df1, p1, eta1 = S._one_way(y, lev, 3)
    assert eta == pytest.approx(eta1)


def rows_of(values, levels, factor="bce_weight"):
    return [
        {"id": f"{i:04x}", "label": f"c{i}", factor: lv, "inputs": "full", "prediction": "area",
         "status": "complete", "mean_dice": v}  # fmt: skip
        for i, (v, lv) in enumerate(zip(values, levels))
    ]


@pytest.mark.parametrize(
    "values, levels, reason",
    [
        ([0.7, 0.8, 0.75], [0.5, 0.5, 0.5], "only one level"),
        ([0.7, 0.8, 0.75], [0.5, 0.5, 0.75], "has 1 complete cell"),
        ([0.7, 0.7, 0.7, 0.7], [0.5, 0.5, 0.75, 0.75], "zero variance"),
        ([0.7, 0.7, 0.8, 0.8], [0.5, 0.5, 0.75, 0.75], "no spread within levels"),
    ],
)
def test_degenerate_cases_are_na_with_a_reason_and_no_warning(values, levels, reason):
    rows = rows_of(values, levels)
    rows.append({**rows[0], "id": "ffff", "bce_weight": 0.99, "status": "failed", "mean_dice": None})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        effs = S.effects(rows)
    e = next(e for e in effs if e.stratum == "all")
    assert e.verdict == "n/a" and reason in e.reason and e.f is None and e.p is None
    assert "bce_weight: n/a (" in S.effect_sentence(e)


def test_factor_fixed_in_the_grid_is_not_tested():
    assert S.effects(rows_of([0.7, 0.8], [0.5, 0.5])) == []


def test_small_n_uses_a_permutation_test():
    rows = rows_of([0.60, 0.61, 0.62, 0.80, 0.81, 0.82], [0.5, 0.5, 0.5, 0.75, 0.75, 0.75])
    e = next(e for e in S.effects(rows) if e.stratum == "all")
    # 6 cells split 3/3: 20 distinct splits, the observed one is the most extreme of 2 (mirror).
    assert e.p_perm == pytest.approx(0.1, abs=0.03) and e.p < 0.001
    assert e.verdict == "no detectable effect"  # the permutation test decides at small n


# ----------------------------------------------------------------------------- markdown and console


def test_markdown_answers_does_each_factor_matter(grid):
    g, cells, _, result = grid
    md = (g / "summary.md").read_text()
    assert md == result.markdown
    assert f"**Cells:** {len(cells)} in all: {len(cells)} complete." in md
    assert "$0.50 of the $10.00 cap (5%)" in md
    assert "- bce_weight: no detectable effect on validation Dice (F=" in md
    assert "- lr: matters (F=" in md and "large; n=108); best level 0.0025 (mean Dice" in md
    assert "| full-area |" in md and str(g / "best") in md
    for b in result.best:
        assert b.id in md


def test_console_table_sorted_with_counts_and_paths(grid):
    g, cells, rows, _ = grid
    text = S.console_table(rows, limit=5, grid_dir=g)
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["#", "mean"]
    shown = [float(line.split()[1]) for line in lines[1:6]]
    assert shown == sorted(shown, reverse=True)
    assert shown[0] == round(max(r["mean_dice"] for r in rows), 4)
    assert f"... {len(cells) - 5} more cells in summary.csv" in text
    assert f"cells: {len(cells)} total, {len(cells)} complete" in text
    assert str(g / "summary.csv") in text and "best full-area:" in text


# ----------------------------------------------------------------------------- Prefect


def test_artifact_key_is_valid():
    assert S.artifact_key("Demo Grid_v2.1") == "demo-grid-v2-1"
    assert S.artifact_key("___") == "grid"


@pytest.mark.slow
def test_artifacts_created_under_a_real_prefect_api(grid, prefect_api):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterId

    _, cells, rows, result = grid

    @flow
    def publish() -> dict:
        progress = S.start_progress(4, key="Demo-progress")
        for done in range(1, 5):
            S.update_progress(progress, done, 4)
        return S.publish_artifacts(result, key_prefix="Demo"), progress

    ids, progress = publish()
    assert set(ids) == {"demo-cells", "demo-summary"}
    # Other tests of the session may publish under the same keys: read these very artifacts.
    with get_client(sync_client=True) as client:
        keys = ["demo-cells", "demo-summary", "demo-progress"]
        wanted = [*ids.values(), progress]
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(id=ArtifactFilterId(any_=wanted)))
    by = {a.key: a for a in arts}
    assert set(by) == set(keys)
    table = json.loads(by["demo-cells"].data)
    assert by["demo-cells"].type == "table" and len(table) == len(cells)
    assert table[0]["id"] == rows[0]["id"] and table[0]["mean_dice"] == pytest.approx(rows[0]["mean_dice"])
    assert by["demo-summary"].type == "markdown" and "- lr: matters" in by["demo-summary"].data
    assert by["demo-progress"].type == "progress" and by["demo-progress"].data == 100.0
    assert by["demo-progress"].description == "4/4 finished"
