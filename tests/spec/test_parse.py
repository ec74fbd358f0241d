"""The grid spec: loading, the legacy form, and every validation rule with its message."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from flows.spec.parse import SpecError, check_spec, default_name, load_spec

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parents[1] / "data"


def write(tmp_path: Path, spec: dict | str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec, sort_keys=False))
    return path


def problems(tmp_path: Path, spec: dict | str, name: str = "spec.yaml") -> list[str]:
    path = write(tmp_path, spec, name)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert str(err.value).startswith(str(path) + ": ")
    assert all(line.startswith(str(path) + ": ") for line in str(err.value).splitlines())
    return err.value.lines


def test_shipped_specs_load():
    benson = load_spec(ROOT / "grid-search/benson2025.yaml")
    assert benson.name == "benson2025" and benson.n_cells == 1800
    assert {k: len(v) for k, v in benson.hyper.items()} == {
        "base_model": 2, "lr": 5, "gamma": 5, "bce_weight": 3, "batch_size": 3, "inputs": 2, "prediction": 2,
    }
    assert benson.static["pretrained"] is False and benson.static["until"] == 2
    assert benson.static["dataset"] == {"kind": "fsaverage", "seed": 0, "subjects": 181, "rows": 128, "cols": 256}
    assert benson.plan_scale["lr"] == pytest.approx([1, 2 / 3, 1 / 3])  # written as 2/3 and 1/3
    demo = load_spec(ROOT / "grid-search/demo.yaml")
    assert demo.n_cells == 12 and set(demo.hyper["inputs"]) == {"full", "anat"} and len(demo.factors) >= 2


def test_defaults_reproduce_the_published_plan(tmp_path):
    spec = load_spec(write(tmp_path, {"name": "g", "hyper": {"lr": [0.003]}}))
    assert len(spec.plan) == 3
    assert spec.plan_scale["lr"] == pytest.approx([1, 2 / 3, 1 / 3])
    assert spec.plan_scale["bce_weight"] == [1, 0.5, 0]
    assert spec.plan_scale["gamma"] == [1, 1, 1]
    two = load_spec(write(tmp_path, {"name": "g", "plan": [{}, {}]}))  # stretched to 2 rounds
    assert two.plan_scale["lr"] == [1, 0.5] and two.plan_scale["bce_weight"] == [1, 0]


def test_values_are_normalized(tmp_path):
    # PyYAML reads 1e-3 as a string; the spec holds the number the trainer will see.
    spec = load_spec(write(tmp_path, "name: g\nhyper:\n  lr: [1e-3, 0.002]\n  batch_size: ['4']\n"))
    assert spec.hyper["lr"] == [0.001, 0.002] and spec.hyper["batch_size"] == [4]


def test_name_defaults_to_the_file_or_folder(tmp_path):
    assert default_name(tmp_path / "my grid.yaml") == "my-grid"
    (tmp_path / "runs2024").mkdir()
    assert default_name(tmp_path / "runs2024" / "grid-params.json") == "runs2024"
    assert load_spec(write(tmp_path, {"hyper": {"lr": [0.001]}}, "quick.yaml")).name == "quick"


def test_legacy_grid_params_loads_unchanged():
    spec = load_spec(DATA / "legacy" / "grid-params.json")
    assert spec.legacy and spec.name == "legacy" and spec.n_cells == 1800
    assert "ignored multiproc, model_cache_path, data_cache_path" in spec.notes[0]
    assert len(spec.static["partition"]["train"]) == 130 and spec.static["partition"]["validation"][0] == "814649"
    twin = load_spec(DATA / "legacy-twin.yaml")
    assert not twin.legacy and twin.static == spec.static and twin.hyper == spec.hyper


# (spec, expected line): one rule each; every message says where and what to do.
RULES = [
    ({"name": "g", "colour": "red"}, "colour: unknown key; known: name, description, static, hyper, plan"),
    ({"name": "g", "base": {"until": 1}}, "base: unknown key; known: name, description, static, hyper, plan, "
                                         "plan_scale, max_cells, halving; keys starting with x- are ignored"),
    ({"name": "bad name"}, "name: use 1-64 letters, digits, '-' or '_', starting with a letter or digit"),
    ({"static": {"batchsize": 4}}, "static.batchsize: unknown option; did you mean batch_size? known: base_model,"),
    ({"hyper": {"gama": [0.9]}}, "hyper.gama: unknown option; did you mean gamma? known:"),
    ({"hyper": {"seed": 3}}, "hyper.seed: Input should be a valid list (got 3)"),
    ({"static": {"lr": 0.1}, "hyper": {"lr": [0.2]}}, "hyper.lr: also set in static; give lr in one place"),
    ({"hyper": {"gamma": []}}, "hyper.gamma: empty list; give at least one level"),
    ({"hyper": {"lr": [0.001, 0.002, "1e-3"]}}, "hyper.lr[2]: duplicate of hyper.lr[0] (0.001)"),
    ({"hyper": {"inputs": ["full", "anat", "full"]}}, "hyper.inputs[2]: duplicate of hyper.inputs[0] (full)"),
    ({"hyper": {"lr": [0.001, 0.002, -0.1]}}, "hyper.lr[2]: Input should be greater than 0 (got -0.1)"),
    ({"hyper": {"lr": ["fast"]}}, "hyper.lr[0]: Input should be a valid number, unable to parse string as a number"),
    ({"hyper": {"base_model": ["resnet50"]}}, "hyper.base_model[0]: Input should be 'resnet18' or 'resnet34'"),
    ({"static": {"inputs": "everything"}},
     "static.inputs: Input should be 'anat', 't1t2', 'func', 'trac', 'not2', 'nofn', 'nodw' or 'full'"),
    ({"static": {"dataset": {"kind": "synthetic", "rows": 33}}},
     "static.dataset.rows: must be a multiple of 32 (the U-Net downsamples by 32), got 33"),
    ({"hyper": {"partition": [0.2, {"train": ["a"]}]}}, "hyper.partition[1].validation: Field required"),
    ({"hyper": {"partition": [1.5]}}, "hyper.partition[0]: Input should be less than 1 (got 1.5)"),
    ({"plan": [{"epochs": 3}]}, "plan[0].epochs: unknown round field; did you mean num_epochs? known: lr, gamma,"),
    ({"plan": [{}, {"num_epochs": 0}]}, "plan[1].num_epochs: Input should be greater than or equal to 1 (got 0)"),
    ({"plan": []}, "plan: List should have at least 1 item after validation, not 0"),
    ({"hyper": {"lr": [0.1]}, "plan": [{"lr": 0.2}]}, "plan[0].lr: also set by hyper.lr; give lr in one place"),
    ({"plan": [{"gamma": 0.9}], "plan_scale": {"gamma": [1]}},
     "plan[0].gamma: set per round, so plan_scale.gamma cannot scale it; drop one"),
    ({"plan_scale": {"lr": [1, 0.5]}}, "plan_scale.lr: 2 multipliers for a plan of 3 rounds; give one per round"),
    ({"plan_scale": {"epochs": [1, 1, 1]}}, "plan_scale.epochs: Input should be 'lr', 'gamma' or 'bce_weight'"),
    ({"plan_scale": {"lr": [1, -1, 1]}}, "plan_scale.lr[1]: Input should be greater than or equal to 0 (got -1)"),
    ({"plan_scale": {"lr": [1, 0, 1]}},
     "plan_scale.lr[1]: gives lr = 0.0 in round 2: Input should be greater than 0 (got 0.0)"),
    ({"static": {"bce_weight": 0.8}, "plan_scale": {"bce_weight": [1, 1.5, 0]}},
     "static.bce_weight: round 2: 0.8 x 1.5 = 1.2: Input should be less than or equal to 1 (got 1.2)"),
    ({"hyper": {"lr": [0.001, 0.002, 0.003], "seed": [0, 1, 2, 3]}, "max_cells": 10},
     "hyper: 3 lr x 4 seed = 12 cells, over max_cells 10; drop levels or raise max_cells"),
    ({"max_cells": 0}, "max_cells: Input should be greater than or equal to 1 (got 0)"),
    # Pydantic's lax mode would read true as 1 and report NaN by the bound it fails.
    ({"hyper": {"lr": [True]}}, "hyper.lr[0]: expected a number, got true"),
    ({"static": {"batch_size": True}}, "static.batch_size: expected a whole number, got true"),
    ({"static": {"partition": False}}, "static.partition: expected a number, got false"),
    ({"static": {"dataset": {"kind": "synthetic", "subjects": True}}},
     "static.dataset.subjects: expected a whole number, got true"),
    ({"plan": [{"num_epochs": True}]}, "plan[0].num_epochs: expected a whole number, got true"),
    ({"plan_scale": {"lr": [1, True, 1]}}, "plan_scale.lr[1]: expected a number, got true"),
    ({"max_cells": True}, "max_cells: expected a whole number, got true"),
    ({"hyper": {"lr": [0.001, float("nan")]}}, "hyper.lr[1]: must be a finite number, got nan"),
    ({"hyper": {"lr": ["inf"]}}, "hyper.lr[0]: must be a finite number, got inf"),
    ({"static": {"gamma": float("-inf")}}, "static.gamma: must be a finite number, got -inf"),
    ({"plan": [{"gamma": float("nan")}]}, "plan[0].gamma: must be a finite number, got nan"),
    ({"plan_scale": {"lr": [1, float("nan"), 1]}}, "plan_scale.lr[1]: must be a finite number, got nan"),
]


@pytest.mark.parametrize("spec,expected", RULES, ids=[r[1].split(":")[0] for r in RULES])
def test_each_rule_has_its_message(tmp_path, spec, expected):
    found = problems(tmp_path, spec)
    assert any(line.startswith(expected) for line in found), found


def test_x_keys_hold_yaml_anchors_and_are_ignored(tmp_path):
    text = (
        "name: anchored\n"
        "x-base: &base {until: 1, seed: 3}\n"
        "x-notes: free text for people\n"
        "static: {<<: *base, batch_size: 2}\n"
    )
    spec = load_spec(write(tmp_path, text))
    assert spec.static == {"until": 1, "seed": 3, "batch_size": 2}


@pytest.mark.parametrize(
    "text,expected",
    [
        ("name: g\nhyper:\n  lr: [1, 2\n  bce: 3\n",
         "line 4, column 6: YAML syntax error: did not find expected ',' or ']'"),
        ("name: g\nhyper:\n  lr: [0.1]\n  lr: [0.2]\n",
         "line 4, column 3: YAML syntax error: key 'lr' is given twice (lines 3 and 4)"),
        ("name: g\nhyper:\n  ? [a, b]\n  : 1\n",
         "line 3, column 5: YAML syntax error: a key must be a name or a number, not a list ([\"a\", \"b\"])"),
        ("plan:\n  - &r {num_epochs: 1}\n  - {<<: *r, num_epochs: 2, num_epochs: 3}\n",
         "line 3, column 29: YAML syntax error: key 'num_epochs' is given twice (lines 3 and 3)"),
        ("", "(top level): the file is empty; a spec is a mapping with name, static, hyper and plan"),
        ("- 1\n- 2\n", "(top level): a spec is a mapping with name, static, hyper and plan"),
    ],
)
def test_syntax_errors_name_their_line(tmp_path, text, expected):
    assert problems(tmp_path, text) == [expected]


def test_json_syntax_error_names_its_line(tmp_path):
    assert problems(tmp_path, '{"name": "g",\n "hyper": {"lr": [1,]}}', "spec.json") == [
        "line 2, column 21: invalid JSON: Expecting value"
    ]


def test_every_problem_is_reported_at_once(tmp_path):
    spec = {
        "name": "g",
        "static": {"inputs": "everything", "batchsize": 4},
        "hyper": {"lr": [0.001, -1.0], "gamma": [], "base_model": ["resnet50"]},
        "plan": [{"num_epochs": 0}, {}, {}],
        "plan_scale": {"lr": [1, 2]},
    }
    found = problems(tmp_path, spec)
    for start in ("static.inputs:", "static.batchsize:", "hyper.lr[1]:", "hyper.gamma:", "hyper.base_model[0]:",
                  "plan[0].num_epochs:", "plan_scale.lr:"):
        assert sum(line.startswith(start) for line in found) == 1, (start, found)
    assert len(found) == 7


def test_levels_are_checked_one_by_one_not_as_a_product():
    # 524,288 cells: checking each level with one probe cell takes milliseconds per level.
    hyper = {
        "lr": [0.001, 0.002, 0.003, 0.004], "gamma": [0.8, 0.85, 0.9, 0.95], "bce_weight": [0.2, 0.4, 0.6, 0.8],
        "num_epochs": [1, 2, 3, 4], "seed": [0, 1, 2, 3], "until": [1, 2, 3, 4], "batch_size": [2, 4, 6, 8],
        "base_model": ["resnet18", "resnet34"], "prediction": ["area", "ring"],
        "inputs": ["anat", "t1t2", "func", "trac", "not2", "nofn", "nodw", "full"],
    }
    start = time.perf_counter()
    spec = check_spec({"name": "huge", "hyper": hyper, "max_cells": 1_000_000})
    assert spec.n_cells == 524_288
    assert time.perf_counter() - start < 1.0


def test_spec_error_carries_lines():
    with pytest.raises(SpecError) as err:
        check_spec({"hyper": {"gamma": []}}, source="x.yaml")
    assert err.value.lines == ["hyper.gamma: empty list; give at least one level"]
    assert str(err.value) == "x.yaml: hyper.gamma: empty list; give at least one level"
    assert isinstance(err.value, ValueError)


def test_a_bad_value_is_one_line_and_counts_once(tmp_path):
    found = problems(tmp_path, {"hyper": {"lr": [float("nan"), True], "gamma": [0.9, 0.8]}})
    assert found == ["hyper.lr[0]: must be a finite number, got nan", "hyper.lr[1]: expected a number, got true"]


def test_yaml_merge_keys_are_accepted(tmp_path):
    text = (
        "name: merged\n"
        "static: &shared {until: 1, seed: 3}\n"
        "plan:\n"
        "  - &round {num_epochs: 2, gamma: 0.9}\n"
        "  - {<<: *round, gamma: 0.8}        # its own gamma overrides the merged one\n"
        "  - <<: [*round, {batch_size: 2}]\n"
    )
    spec = load_spec(write(tmp_path, text))
    assert spec.static == {"until": 1, "seed": 3}
    assert spec.plan == [{"num_epochs": 2, "gamma": 0.9}, {"num_epochs": 2, "gamma": 0.8},
                         {"num_epochs": 2, "gamma": 0.9, "batch_size": 2}]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("name: g\nhyper:\n  ? [a, b]\n  : 1\n", "line 3, column 5: YAML syntax error: a key must be a name"),
        ("name: g\nhyper:\n  lr: [true]\n", "hyper.lr[0]: expected a number, got true"),
        ("name: g\nhyper:\n  lr: [.nan, 0.1]\n", "hyper.lr[0]: must be a finite number, got nan"),
        ("name: g\nstatic:\n  batch_size: true\n", "static.batch_size: expected a whole number, got true"),
    ],
)
def test_the_dry_run_reports_bad_input_in_one_line(tmp_path, text, expected):
    path = write(tmp_path, text)
    run = subprocess.run([sys.executable, "-m", "flows.grid", str(path), "--dry-run"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stderr.startswith(f"{path}: {expected}")
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr and run.stdout == ""
