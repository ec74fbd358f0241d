"""Expansion into cells: ids from content, labels, the published plan, cell folders."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from autolabel import storage
from autolabel.celldir import is_complete
from autolabel.options import CellOptions, Plan
from flows.spec.cells import (
    cell_dir,
    complete_ids,
    expand,
    grid_dir,
    hash_id,
    serialize,
    write_cell,
)
from flows.spec.parse import check_spec, load_spec
from flows.spec.values import round_sig

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def benson():
    return expand(load_spec(ROOT / "grid-search/benson2025.yaml"))


def cells_of(spec: dict) -> list:
    return expand(check_spec(spec))


def test_benson_expands_to_1800_distinct_cells(benson):
    assert len(benson) == 1800
    assert len({c.id for c in benson}) == 1800 and len({c.label for c in benson}) == 1800


def test_benson_plans_follow_the_published_derivation(benson):
    for c in benson:
        lr, g, bce = c.hyper["lr"], c.hyper["gamma"], c.hyper["bce_weight"]
        assert [r.lr for r in c.plan.root] == [lr, round_sig(lr * 2 / 3), round_sig(lr / 3)]
        assert [r.bce_weight for r in c.plan.root] == [bce, round_sig(bce / 2), 0.0]
        assert [r.gamma for r in c.plan.root] == [g, g, g]
        assert [r.num_epochs for r in c.plan.root] == [10, 10, 10] and all(r.batch_size is None for r in c.plan.root)
        o = c.options
        assert (o.base_model, o.batch_size, o.inputs, o.prediction) == tuple(
            c.hyper[k] for k in ("base_model", "batch_size", "inputs", "prediction")
        )
        assert o.pretrained is False and o.until == 2 and o.partition == 0.2
        assert (o.dataset.subjects, o.dataset.rows, o.dataset.cols) == (181, 128, 256)
    # 0.00844 x 2/3 = 0.0056266..., kept to 6 significant digits
    assert any(c.plan[1].lr == 0.00562667 for c in benson)


def test_order_and_label(benson):
    # The original tooling's order: the first factor varies fastest.
    assert [c.hyper["base_model"] for c in benson[:3]] == ["resnet18", "resnet34", "resnet18"]
    assert benson[1].hyper["lr"] == benson[0].hyper["lr"] and benson[2].hyper["lr"] != benson[0].hyper["lr"]
    labels = {c.label: c for c in benson}
    c = labels["resnet18-lr0.0025-g0.9-bce0.67-b4-full-area"]
    assert c.hyper == {"base_model": "resnet18", "lr": 0.0025, "gamma": 0.9, "bce_weight": 0.67,
                       "batch_size": 4, "inputs": "full", "prediction": "area"}


def test_ids_are_safe_names(benson, tmp_path):
    for c in benson[:50]:
        assert re.fullmatch(r"[0-9a-f]{16}", c.id)
        assert storage.join("s3://lab-bucket/grids/benson2025", "cells", c.id).endswith(c.id)
    assert cell_dir(tmp_path, benson[0]) == tmp_path / "cells" / benson[0].id
    # The id is the hash of the cell's own content: the same options and plan give it in any grid.
    assert hash_id(serialize(benson[7].options)[1], serialize(benson[7].plan)[1]) == benson[7].id


def test_legacy_grid_params_gives_the_cells_of_its_yaml_twin():
    legacy = expand(load_spec(DATA / "legacy" / "grid-params.json"))
    twin = expand(load_spec(DATA / "legacy-twin.yaml"))
    assert len(legacy) == 1800
    assert [(c.id, c.label, c.hyper) for c in legacy] == [(c.id, c.label, c.hyper) for c in twin]
    assert legacy[0].options.partition.validation[:2] == ["814649", "381038"]


def test_ids_survive_a_growing_hyper_list():
    base = {"name": "g", "static": {"until": 1}, "hyper": {"lr": [0.001, 0.002], "inputs": ["full", "anat"]}}
    before = {c.id: c.label for c in cells_of(base)}
    bigger = {**base, "hyper": {"lr": [0.001, 0.002, 0.004], "inputs": ["full", "anat"]}}
    grown = {c.id: c.label for c in cells_of(bigger)}
    assert len(grown) == 6 and set(before) < set(grown)
    assert all(grown[i] == label for i, label in before.items())
    # A static value turned into a one-level factor, or a third factor added: same content, same ids.
    moved = {"name": "g", "hyper": {"lr": [0.001, 0.002], "inputs": ["full", "anat"], "until": [1]}}
    assert set(c.id for c in cells_of(moved)) == set(before)


def test_ids_ignore_spelled_out_defaults_name_and_key_order():
    plain = cells_of({"name": "a", "hyper": {"lr": [0.001, 0.002], "inputs": ["full", "anat"]}})
    spelled = cells_of({
        "name": "b",
        "static": {"seed": 0, "device": "auto", "pretrained": False, "dataset": {"kind": "synthetic"}},
        "hyper": {"inputs": ["anat", "full"], "lr": [0.002, 0.001]},
        "plan": [{"num_epochs": 10}, {"gamma": 1.0}, {}],
    })
    assert {c.id for c in plain} == {c.id for c in spelled}


def test_labels_show_only_factors_that_vary():
    cells = cells_of({"name": "g", "hyper": {"base_model": ["resnet34"], "lr": [0.001, 0.0025], "seed": [0, 1]}})
    assert [c.label for c in cells] == ["lr0.001-seed0", "lr0.0025-seed0", "lr0.001-seed1", "lr0.0025-seed1"]
    assert cells[0].hyper == {"base_model": "resnet34", "lr": 0.001, "seed": 0}
    assert cells_of({"name": "single"})[0].label == "single"


def test_written_cell_is_what_the_trainer_reads_and_is_rewritten_only_on_change(tmp_path, benson):
    d = write_cell(tmp_path, benson[0])
    assert d == tmp_path / "cells" / benson[0].id
    assert CellOptions.model_validate_json((d / "options.json").read_text()) == benson[0].options
    assert Plan.model_validate_json((d / "plan.json").read_text()) == benson[0].plan
    inodes = [(d / f).stat().st_ino for f in ("options.json", "plan.json")]
    write_cell(tmp_path, benson[0])
    assert [(d / f).stat().st_ino for f in ("options.json", "plan.json")] == inodes
    (d / "plan.json").write_text("[]")  # damaged: rewritten
    write_cell(tmp_path, benson[0])
    assert Plan.model_validate_json((d / "plan.json").read_text()) == benson[0].plan


def test_complete_means_metrics_say_so(tmp_path):
    cells = tmp_path / "cells"
    for name, metrics in (("a", {"status": "complete"}), ("b", {"status": "failed"}), ("c", "{not json"), ("d", None)):
        (cells / name).mkdir(parents=True)
        if metrics is not None:
            (cells / name / "metrics.json").write_text(metrics if isinstance(metrics, str) else json.dumps(metrics))
    assert [is_complete(cells / n) for n in "abcd"] == [True, False, False, False]
    assert complete_ids(tmp_path) == {"a"}
    assert complete_ids(tmp_path / "nowhere") == set()


def test_grid_dir_defaults_beside_the_spec(tmp_path):
    path = tmp_path / "specs" / "mine.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump({"name": "trial", "hyper": {"lr": [0.001]}}))
    spec = load_spec(path)
    assert grid_dir(spec, path) == tmp_path / "specs" / "trial"
    assert grid_dir(spec, path, tmp_path / "elsewhere") == tmp_path / "elsewhere"
