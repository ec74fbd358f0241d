"""A halved grid run end to end (flows/run/halving.py under the flow), against the same grid run in full,
and the replay command (flows/halving.py) on the full one.

The stand-in trainer (tests/stand_in_trainer.py) writes the trainer's history.csv columns with a
learning curve fixed by each cell's options, honours --until-round as the trainer does, and scores
metrics.json by the trainer's rule, so both runs see the same cells' numbers in a fraction of a second.
The grid: 3 lr x 2 bce_weight x 2 batch_size x 2 seed x 2 inputs (2 strata of 24 cells, 4 factors),
2 rounds x until 2, so cuts after rounds 1 and 2 of 4.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import time
from pathlib import Path

import pytest

from flows import flow as grid_mod
from flows import halving as replay_cli
from flows.spec.cells import cell_dir, expand
from flows.spec.halving import read_state
from flows.spec.parse import Halving, load_spec
from tests.conftest import STAND_IN, launches, write_grid_spec
from tests.test_flow import end_session, flow_env, start_flow, wait_until

HYPER = {"lr": [0.001, 0.002, 0.004], "bce_weight": [0.5, 0.75], "batch_size": [2, 4], "seed": [0, 1],
         "inputs": ["full", "anat"]}
FACTORS = ("lr", "bce_weight", "batch_size", "seed")
MARGIN = 0.05  # mean Dice a halved winner may trail the full grid's by


@pytest.fixture(autouse=True)
def no_local_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def run_flow(spec: Path, out: Path, **kw):
    return grid_mod.grid_search(spec=str(spec), out_dir=str(out), max_parallel=2, cells_per_gpu=12, retry_delay_s=0.2,
                                trainer=STAND_IN, return_state=True, **kw)


@pytest.fixture(scope="module")
def grids(prefect_api, tmp_path_factory):
    """The grid trained in full and halved, in two folders (module-wide: the tests below only read them)."""
    tmp = tmp_path_factory.mktemp("halving")
    spec = write_grid_spec(tmp, "g", HYPER, static={"until": 2}, epochs=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CUDA_VISIBLE_DEVICES", "")
        full, halved = run_flow(spec, tmp / "full"), run_flow(spec, tmp / "halved", halving=True)
    return spec, tmp / "full", tmp / "halved", full, halved


def summary_of(grid: Path) -> dict:
    return json.loads((grid / "summary.json").read_text())


def epochs_trained(grid: Path) -> int:
    return sum(len(list(csv.DictReader(open(p)))) for p in (grid / "cells").glob("*/history.csv"))


def test_a_halved_run_keeps_the_grids_answers_for_fewer_epochs(grids, capsys):
    spec, full, halved, full_state, halved_state = grids
    assert full_state.is_completed() and halved_state.is_completed(), halved_state.message  # cut cells: by design
    assert "stopped by halving" in halved_state.message
    cells = expand(load_spec(spec))
    decisions = json.loads((halved / "halving.json").read_text())
    audit = set(decisions["audit"])
    assert len(audit) == 4  # 2 of each stratum's 24
    # Every cell has a score at the first cut: the ranked ones in halving.json, all of them in their history.
    rule = Halving(**decisions["rule"])
    assert all(read_state(halved, c, rule).scores.get(1) for c in cells)
    first = [c for c in decisions["cuts"] if c["cut"] == 1]
    assert sum(c["ranked"] for c in first) == 44 and all(v["score"] is not None for c in first for v in c["cells"])
    # Every level of every factor goes on past each cut in each stratum, besides the audit cells.
    hyper = {c.id: c.hyper for c in cells}
    for cut in decisions["cuts"]:
        kept = [v["id"] for v in cut["cells"] if v["kept"]]
        for f in FACTORS:
            assert {hyper[i][f] for i in kept} == set(HYPER[f]), (cut["stratum"], cut["cut"], f)
    assert [c["cut"] for c in decisions["cuts"]].count(2) == 2  # both strata reached the second cut
    # The audit cells reach the end; the others end complete or cut, and summary.csv says which cut.
    rows = {r["id"]: r for r in summary_of(halved)["rows"]}
    assert all(rows[i]["status"] == "complete" and rows[i]["cut"] == "end" and rows[i]["audit"] for i in audit)
    assert {r["status"] for r in rows.values()} == {"complete", "cut"}
    assert {r["cut"] for r in rows.values() if r["status"] == "cut"} == {"1", "2"}
    assert "cut" in (halved / "summary.csv").read_text().splitlines()[0].split(",")
    # Trained clearly less, yet each stratum's winner is the full grid's or within a small margin, and
    # where it is not the same cell, the replay of the full grid explains it.
    assert epochs_trained(halved) <= 0.7 * epochs_trained(full), (epochs_trained(halved), epochs_trained(full))
    assert replay_cli.main([str(spec), "--out", str(full), "--json"]) == 0
    replay = {s["stratum"]: s for s in json.loads(capsys.readouterr().out)["strata"]}
    best = {b["stratum"]: b for b in summary_of(halved)["best"]}
    for b in summary_of(full)["best"]:
        mine, r = best[b["stratum"]], replay[b["stratum"]]
        assert mine["label"] == r["halved_winner"]  # the run and the replay decided alike
        assert mine["id"] == b["id"] or (b["mean_dice"] - mine["mean_dice"] <= MARGIN
                                         and r["winner_fate"].startswith("stopped at cut")), (b, mine, r)
    # The statistics: every cell at the first cut, the audit cells at the end.
    h = summary_of(halved)["halving"]
    assert h["first_cut_n"] == 48 and h["audit_n"] == 4 and h["first_cut_effects"]
    assert {e["n"] for e in summary_of(halved)["effects"]} <= {4, 2}  # the end's tests: audit cells only
    md = (halved / "summary.md").read_text()
    assert "## Halving" in md and "at the first cut? (48 cells, round 1 of 4, epoch 2)" in md


def test_a_rerun_of_a_halved_grid_trains_nothing_and_decides_alike(grids):
    spec, _, halved, _, _ = grids
    before = {d.name: launches(d) for d in (halved / "cells").iterdir()}
    decisions = (halved / "halving.json").read_text()
    state = run_flow(spec, halved, halving=True)
    assert state.is_completed(), state.message
    assert {d.name: launches(d) for d in (halved / "cells").iterdir()} == before
    assert (halved / "halving.json").read_text() == decisions


def test_the_replay_needs_a_grid_trained_in_full(grids, capsys):
    spec, full, halved, _, _ = grids
    assert replay_cli.main([str(spec), "--out", str(halved)]) == 2
    assert "cells are not complete; the replay needs a grid trained in full" in capsys.readouterr().err
    assert replay_cli.main([str(spec), "--out", str(full), "--eta", "2"]) == 0
    out = capsys.readouterr().out
    assert "halving replayed (eta 2, cuts after rounds 1, 2" in out and "full-area:" in out and "Spearman" in out


def test_a_run_stopped_by_sigterm_between_two_cuts_resumes_to_the_same_decisions(grids, tmp_path):
    spec, _, halved, _, _ = grids
    out = tmp_path / "stopped"
    env = flow_env(tmp_path) | {"STAND_IN_EPOCH_S": "0.15"}
    log = tmp_path / "flow.log"
    proc = start_flow(spec, env, log, out_dir=str(out), cells_per_gpu=12, halving=True)

    def between_cuts() -> bool:
        try:
            cuts = json.loads((out / "halving.json").read_text())["cuts"]
        except (OSError, ValueError):
            return False
        return any(c["cut"] == 1 for c in cuts) and not any(c["cut"] == 2 for c in cuts)

    try:
        wait_until(between_cuts, proc, log, seconds=180)
        seen = json.loads((out / "halving.json").read_text())["cuts"]
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        end_session(proc)
    assert proc.returncode == 143, log.read_text()[-3000:]
    assert not any(c["cut"] == 2 for c in json.loads((out / "halving.json").read_text())["cuts"])
    time.sleep(0.1)
    state = run_flow(spec, out, halving=True)
    assert state.is_completed(), state.message
    final = json.loads((out / "halving.json").read_text())
    assert all(c in final["cuts"] for c in seen)  # what was decided before the stop stands
    assert final == json.loads((halved / "halving.json").read_text())  # and the rest as an unbroken run decided
    for d in (out / "cells").iterdir():  # no cell trained past where its decisions allow
        assert len(list(csv.DictReader(open(d / "history.csv")))) == \
            len(list(csv.DictReader(open(cell_dir(halved, d.name) / "history.csv"))))
