"""One plan for the dry run and the run (flows/plan/prepare.py): what it holds, locally and on ECS."""

from __future__ import annotations

import json

import pytest

from flows.cost import estimate
from flows.cost.cap import plan_run
from flows.cost.estimate import price_packs
from flows.ecs.settings import EcsSettings
from flows.plan.prepare import prepare
from flows.run.settings import RunSettings
from flows.spec.cells import cell_dir, expand
from flows.spec.parse import load_spec
from tests.conftest import write_grid_spec


@pytest.fixture(autouse=True)
def no_local_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def complete(grid, cell) -> None:
    d = cell_dir(grid, cell)
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"status": "complete"}))


def test_a_local_plan_holds_the_pending_cells_their_priced_packs_and_the_spend(tmp_path):
    spec = write_grid_spec(tmp_path, "g", {"lr": [0.002, 0.003], "bce_weight": [0.5, 0.75]})
    cells = expand(load_spec(spec))
    complete(tmp_path / "g", cells[0])
    (tmp_path / "g" / "ledger.jsonl").write_text(json.dumps({"event": "charge", "usd": 0.25, "cells": []}) + "\n")
    plan = prepare(spec, RunSettings(local_usd_per_hour=36.0, cells_per_gpu=2))

    assert plan.grid_dir == tmp_path / "g" and plan.cells == cells
    assert plan.complete == {cells[0].id} and plan.pending == cells[1:]
    assert plan.ecs is None and plan.gpus == [] and plan.problems == []
    p = plan.pricing
    assert (p.backend, p.usd_per_gpu_hour, p.cells_per_gpu, p.max_parallel, p.instances) == ("local", 36.0, 2, 2, False)
    d = plan.decision
    assert d.fits and d.spent_usd == 0.25 and plan.todo == plan.pending and plan.left_out == []
    # The packs that run are the estimate's own, each with what its launch reserves.
    assert plan.packs == price_packs(plan.pending, p)
    assert [c.id for pk in plan.packs for c in pk.cells] == [c.id for c in plan.pending]
    assert sum(pk.usd for pk in plan.packs) == pytest.approx(d.estimate.usd)
    assert all(pk.lane_usd == 0 for pk in plan.packs), "local GPUs start no instance"
    assert plan.decision == plan_run(plan.pending, p, None, 0.25)  # the cap's one decision

    forced = prepare(spec, RunSettings(force=True))
    assert forced.pending == cells and forced.pricing.usd_per_gpu_hour == 0
    assert any("a local run without GPUs is charged $0" in n for n in forced.notes)


def test_over_the_cap_the_plan_runs_the_subset_or_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(estimate, "MAX_PACK_CELLS", 1)  # a process per cell: the cap weighs cells one by one
    spec = write_grid_spec(tmp_path, "g", {"lr": [0.002, 0.003, 0.004], "bce_weight": [0.5, 0.75]})
    one_cell = prepare(spec, RunSettings(local_usd_per_hour=3600.0)).packs[0].usd
    cap = 3.5 * one_cell  # the covering 3 cells fit, all 6 do not
    subset = prepare(spec, RunSettings(local_usd_per_hour=3600.0, max_cost_usd=cap, on_cap="subset"))
    assert not subset.decision.fits and subset.decision.runs
    assert 3 <= len(subset.todo) < 6 and len(subset.todo) + len(subset.left_out) == 6
    assert {c.id for c in subset.todo} == {c.id for c in subset.decision.subset}
    refused = prepare(spec, RunSettings(local_usd_per_hour=3600.0, max_cost_usd=cap))
    assert not refused.decision.runs and refused.packs == [] and len(refused.left_out) == 6
    assert "--on-cap subset runs them" in refused.decision.message()


def test_what_training_would_refuse_is_a_problem_of_the_plan(tmp_path):
    partition = {"train": ["sub000", "nobody"], "validation": ["sub001"]}
    spec = write_grid_spec(tmp_path, "g", {"lr": [0.002]}, static={"partition": partition})
    plan = prepare(spec, RunSettings())
    assert len(plan.problems) == 1 and "partition: unknown subject id(s) ['nobody']" in plan.problems[0]
    assert plan.decision.estimate.cells == 1, "still priced: the dry run shows the price"


def test_an_ecs_plan_reads_the_stack_and_prices_its_lanes(tmp_path, aws):
    spec = write_grid_spec(tmp_path, "g", {"lr": [0.002, 0.003]})
    plan = prepare(spec, RunSettings(backend="ecs", max_parallel=2, cells_per_gpu=1, ecs=aws.settings()))
    assert plan.problems == [] and isinstance(plan.ecs, EcsSettings) and plan.ecs.cluster == aws.cluster
    p = plan.pricing
    assert (p.backend, p.instances, p.max_parallel) == ("ecs", True, 2)
    assert p.usd_per_gpu_hour == pytest.approx(p.price.per_gpu(False))
    assert any("priced" in n or "table" in n for n in plan.notes), plan.notes  # where the prices came from
    assert [pk.lane_usd > 0 for pk in plan.packs] == [True, True], "each of the 2 lanes opens an instance"
    assert plan.decision.estimate.gpu_hours_overhead > 0


def test_ecs_settings_that_cannot_run_are_problems_after_the_price(tmp_path, aws):
    spec = write_grid_spec(tmp_path, "g", {"lr": [0.002]})
    plan = prepare(spec, RunSettings(backend="ecs", ecs={"cluster": aws.cluster}))
    assert plan.ecs is None
    assert [x.split(":")[0] for x in plan.problems] == ["ecs.capacity_provider", "ecs.task_definition", "ecs.bucket"]
    assert plan.decision.estimate.backend == "ecs" and plan.packs, "a lab prices a cloud run before its stack"


def test_a_cell_folder_that_is_a_link_counts_as_the_trainer_sees_it(tmp_path):
    spec = write_grid_spec(tmp_path, "g", {"lr": [0.002, 0.003]})
    cells = expand(load_spec(spec))
    elsewhere = tmp_path / "other-disk" / cells[0].id
    elsewhere.mkdir(parents=True)
    (elsewhere / "metrics.json").write_text(json.dumps({"status": "complete"}))
    (tmp_path / "g" / "cells").mkdir(parents=True)
    (tmp_path / "g" / "cells" / cells[0].id).symlink_to(elsewhere)
    plan = prepare(spec, RunSettings())
    assert plan.complete == {cells[0].id} and plan.pending == cells[1:]


def test_an_unreadable_metrics_json_is_named_not_counted(tmp_path):
    spec = write_grid_spec(tmp_path, "g", {"lr": [0.002, 0.003]})
    cells = expand(load_spec(spec))
    complete(tmp_path / "g", cells[0])
    (cell_dir(tmp_path / "g", cells[0]) / "metrics.json").write_text('{"status": "compl')
    plan = prepare(spec, RunSettings())
    path = cell_dir(tmp_path / "g", cells[0]) / "metrics.json"
    assert plan.complete == set() and plan.pending == cells
    assert any(n.startswith(f"{path}: unreadable metrics.json") and "rebuilds it from model.pt" in n for n in plan.notes)
