"""The halved run's plan (flows/plan/halving.py) and its dry run: priced from the counts, beside the full grid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows import grid as cli
from flows.plan.prepare import prepare
from flows.run.settings import RunSettings
from flows.spec.cells import cell_dir, expand, write_cell
from flows.spec.parse import load_spec
from tests.conftest import write_grid_spec
from tests.stand_in_trainer import train

BENSON = Path(__file__).resolve().parents[2] / "grid-search" / "benson2025.yaml"


@pytest.fixture(autouse=True)
def no_local_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def test_the_published_grid_halved_is_priced_from_the_counts_beside_the_full_grid(capsys):
    code = cli.main([str(BENSON), "--dry-run", "--halving", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["cells_to_train"] == 1800
    h, est, full = doc["halving"], doc["estimate"], doc["halving"]["full_estimate"]
    assert h["rule"] == {"eta": 3, "cuts": [1, 3], "audit_fraction": 0.07, "audit_per_stratum": 2}
    assert h["audit_cells"] == 128  # round(0.07 x 450) = 32 a stratum
    # 418 ranked a stratum: ceil(418 / 3) = 140 go on, then ceil(140 / 3) = 47 (the level minimums fit).
    assert [(c["round"], c["ranked"], c["kept"]) for c in h["cuts"]] == [(1, 1672, 560), (3, 560, 188)]
    assert [(s["rounds"], s["cells"]) for s in h["stretches"]] == [
        ([0, 1], 1672), ([0, None], 128), ([1, 3], 560), ([3, None], 188)]
    # The estimate is the halved run's own; the full grid's stands beside it (the dry run without --halving).
    capsys.readouterr()
    cli.main([str(BENSON), "--dry-run", "--json"])
    plain = json.loads(capsys.readouterr().out)["estimate"]
    assert full["train_images"] == plain["train_images"] == 15_660_000
    assert full["gpu_hours_cells"] == pytest.approx(plain["gpu_hours_cells"])
    # (1672 x 1 + 128 x 6 + 560 x 2 + 188 x 3) rounds of 1450 images, of 1800 x 6.
    assert est["train_images"] == 1450 * (1672 + 128 * 6 + 560 * 2 + 188 * 3) == 5_979_800
    assert est["train_images"] / full["train_images"] == pytest.approx(h["train_images_share"])
    assert h["train_images_share"] < 0.45
    assert est["gpu_hours_cells"] / full["gpu_hours_cells"] == pytest.approx(h["gpu_hours_cells_share"])
    cli.main([str(BENSON), "--dry-run", "--halving"])
    text = capsys.readouterr().out
    assert "cut 1 (round 1): 1,672 cells ranked, 560 go on" in text
    assert "5.98 M training images (38% of the full grid's 15.66 M)" in text


def test_a_plan_decides_what_the_files_allow_and_trains_each_cell_only_to_its_next_cut(tmp_path):
    spec = write_grid_spec(tmp_path, "g", {"lr": [0.001, 0.002, 0.004], "bce_weight": [0.5, 0.75],
                                           "inputs": ["full", "anat"]}, static={"until": 2}, epochs=1)
    cells = expand(load_spec(spec))
    first = prepare(spec, RunSettings(halving=True))
    h = first.halving
    assert h.rule.cuts == [1, 2] and not h.replay.cuts and first.problems == []
    assert {p.until_round for p in first.packs} == {1, None}
    audit = [c for c in cells if c.id in h.audit]
    assert {c.id for p in first.packs if p.until_round is None for c in p.cells} == {c.id for c in audit}
    # Every non-audit full cell reaches the first cut (the stand-in trainer, --until-round 1).
    for c in cells:
        write_cell(tmp_path / "g", c)
    full = [c for c in cells if c.hyper["inputs"] == "full" and c.id not in h.audit]
    for c in full:
        assert train(cell_dir(tmp_path / "g", c), "", False, 0.0, until_round=1) == 0
    second = prepare(spec, RunSettings(halving=True))
    (cut,) = second.halving.replay.cuts
    assert cut.stratum == "full-area" and cut.ranked == len(full) == 4
    kept = {v.id for v in cut.verdicts if v.kept}
    by_round: dict = {}
    for p in second.packs:
        by_round.setdefault(p.until_round, set()).update(c.id for c in p.cells)
    assert by_round[2] == kept  # the kept full cells train on to the second cut, and no further
    assert not {c.id for c in full} - kept & set().union(*by_round.values())  # the stopped ones train no more
    anat = {c.id for c in cells if c.hyper["inputs"] == "anat" and c.id not in h.audit}
    assert by_round[1] == anat  # anat has not reached its first cut yet
    assert second.decision.estimate.train_images < first.decision.estimate.train_images


def test_halving_refuses_force_and_a_cap_it_cannot_meet(tmp_path, capsys):
    spec = write_grid_spec(tmp_path, "g", {"lr": [0.001, 0.002], "inputs": ["full", "anat"]}, static={"until": 2})
    assert cli.main([str(spec), "--dry-run", "--halving", "--force"]) == 2
    assert "--force: does not combine with halving" in capsys.readouterr().err
    code = cli.main([str(spec), "--dry-run", "--halving", "--max-cost", "0.0001", "--local-usd-per-hour", "3600",
                     "--on-cap", "subset"])
    out = capsys.readouterr().out
    assert code == 3 and "no subset to offer" in out
    flat = tmp_path / "flat.yaml"
    flat.write_text("name: flat\nstatic: {device: cpu}\nhyper: {lr: [0.001, 0.002]}\nplan: [{num_epochs: 2}]\n")
    assert cli.main([str(flat), "--dry-run", "--halving"]) == 2
    assert "--halving: the plan trains 1 round(s) in all" in capsys.readouterr().err
