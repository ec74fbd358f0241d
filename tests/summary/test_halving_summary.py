"""A halved grid's summary (flows/summary/halving.py): the tests where they stay valid, the cuts checked.

The grid is trained in full by the stand-in trainer in this process (no flow): every cell's history
is there, so the rule's replay and the statistics can be checked against numbers known here.
"""

from __future__ import annotations

import csv

import pytest

from autolabel.celldir import HISTORY_COLUMNS, read_metrics
from flows.spec.cells import cell_dir, expand, write_cell
from flows.spec.parse import Halving, load_spec
from flows.summary.files import write_summary
from flows.summary.halving import (
    below_first_cut,
    power,
    replay_grid,
    replay_report,
    summarize_halving,
)
from flows.summary.rows import collect_rows
from flows.summary.stats import Effect
from tests.conftest import write_grid_spec
from tests.stand_in_trainer import train

RULE = Halving(cuts=[1, 2], audit_fraction=0.25)


@pytest.fixture
def trained(tmp_path):
    """24 cells (3 lr x 2 bce_weight x 2 seed x 2 inputs), 2 rounds x until 2, trained to the end."""
    spec = write_grid_spec(tmp_path, "g", {"lr": [0.001, 0.002, 0.004], "bce_weight": [0.5, 0.75], "seed": [0, 1],
                                           "inputs": ["full", "anat"]}, static={"until": 2})
    grid, cells = tmp_path / "g", expand(load_spec(spec))
    for c in cells:
        write_cell(grid, c)
        assert train(cell_dir(grid, c), "", False, 0.0) == 0
    return grid, cells


def test_power_follows_cohen_at_a_medium_effect():
    """lambda = f^2 N: 120 cells and a 5-level factor in a model with 103 residual df."""
    effect = Effect(factor="lr", stratum="all", test="", n=120, levels=[], verdict="n/a", df=(4, 103))
    assert power(effect) == pytest.approx(0.561, abs=0.002)
    assert power(effect.model_copy(update={"n": 240, "df": (4, 223)})) == pytest.approx(0.891, abs=0.002)
    assert power(effect.model_copy(update={"df": None})) is None


def test_the_summary_tests_all_cells_at_the_first_cut_and_the_audit_cells_at_the_end(trained):
    grid, cells = trained
    rows, h = summarize_halving(grid, cells, collect_rows(grid, cells), RULE)
    audit = {r["id"] for r in rows if r["audit"]}
    assert len(audit) == 6  # round(0.25 x 12) a stratum
    assert h.first_cut_n == 24 and {e.n for e in h.first_cut_effects if e.stratum == "all"} == {24}
    assert h.audit_n == 6 and {e.n for e in h.audit_effects if e.stratum == "all"} == {6}
    assert set(h.audit_power) == {e.factor for e in h.audit_effects if e.stratum == "all"}
    # At the first cut each cell is scored as metrics.json would be had the plan ended there.
    replay, states = replay_grid(grid, cells, RULE)
    assert all(v.epoch == 1 for c in replay.cuts if c.index == 1 for v in c.verdicts)
    assert h.first_cut == "round 1 of 4, epoch 1"
    lr = next(e for e in h.first_cut_effects if e.factor == "lr" and e.stratum == "all")
    at_cut = [states[c.id].scores[1].mean_dice for c in cells if c.hyper["lr"] == 0.001]  # audit cells too
    assert len(at_cut) == 8 and {lv.level: lv.mean for lv in lr.levels}[0.001] == pytest.approx(sum(at_cut) / 8)
    assert at_cut != [r["mean_dice"] for r in rows if r["lr"] == 0.001]  # not the end's Dice
    # Winners and the best cell of each level are described, marked selected or audit.
    winners = [s for s in h.selected if not s.factor]
    assert {s.stratum for s in winners} == {"full-area", "anat-area"}
    assert {(s.stratum, s.factor) for s in h.selected if s.factor} == {
        (st, f) for st in ("full-area", "anat-area") for f in ("lr", "bce_weight", "seed")}
    assert all(s.selected == (s.id not in audit) for s in h.selected)
    # Each cut's prediction, per stratum, on the audit cells.
    assert [(p.stratum, p.cut, p.n) for p in h.predictions] == [
        ("anat-area", 1, 3), ("anat-area", 2, 3), ("full-area", 1, 3), ("full-area", 2, 3)]
    assert all(p.spearman is None or -1 <= p.spearman <= 1 for p in h.predictions)


def test_a_late_bloomer_is_an_audit_cell_below_the_first_cut_that_ends_in_its_strata_top_tenth(trained):
    grid, cells = trained
    replay, _ = replay_grid(grid, cells, RULE)
    bloomer = next(c for c in cells if c.id in replay.audit)
    d = cell_dir(grid, bloomer)
    with open(d / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:  # dreadful in the first round, best of all at the end
        r["val_dice"] = "0.99" if r["round"] == "0" and r["repeat"] == "0" else r["val_dice"]
    with open(d / "history.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    m = read_metrics(d)
    (d / "metrics.json").write_text(m.model_copy(update={"mean_dice": 0.99}).model_dump_json())
    rows, h = summarize_halving(grid, cells, collect_rows(grid, cells), RULE)
    states = replay_grid(grid, cells, RULE)[1]
    assert below_first_cut(next(r for r in rows if r["id"] == bloomer.id), states, replay)
    assert h.late_bloomers == [bloomer.label]


def test_summary_files_of_a_halved_grid_and_the_replay_of_a_full_one(trained):
    grid, cells = trained
    rows = collect_rows(grid, cells)
    s = write_summary(grid, cells, rows, halving=RULE, plots=False)
    header = (grid / "summary.csv").read_text().splitlines()[0].split(",")
    assert header[-2:] == ["cut", "audit"] and "cut" not in [e.factor for e in s.effects]
    md = (grid / "summary.md").read_text()
    for heading in ("## Halving", "at the first cut? (24 cells", "the 6 audit cells", "The selected cells, described",
                    "How well each cut predicted the end", "Late bloomers"):
        assert heading in md, heading
    strata, predictions = replay_report(grid, cells, rows, RULE)
    assert {x.stratum for x in strata} == {"full-area", "anat-area"}
    for x in strata:
        assert x.same == (x.winner == x.halved_winner) and x.lost_dice == pytest.approx(x.winner_dice - x.halved_dice)
        assert x.same or x.winner_fate.startswith("stopped at cut")
    assert {p.n for p in predictions} == {12}  # all cells of a stratum: all were trained to the end
