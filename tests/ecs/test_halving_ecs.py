"""Halving on the ECS backend (flows/ecs/runner.py against moto and the container emulator, as in
tests/ecs/test_runner.py): a pack stops at a cut, and a new pack resumes the cell from its S3 checkpoint."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from autolabel.options import Plan, Round
from flows.spec.cells import cell_dir
from tests.conftest import pack_of
from tests.ecs.test_runner import record_calls, runner_for, s3_keys, tiny_cell
from tests.ecs_emulator import ContainerEmulator, trainer_env


@pytest.fixture
def cache(tmp_path_factory) -> Path:
    # One cache for the session (conftest.py sets it): the cohort is generated once.
    return Path(os.environ.get("AUTOLABEL_CACHE") or tmp_path_factory.getbasetemp() / "autolabel-cache")


@pytest.mark.slow
def test_a_pack_stops_at_a_halving_cut_and_a_new_pack_resumes_from_its_s3_checkpoint(aws, tmp_path, cache):
    """Halving on ECS: a task trains to the cut (--until-round) and leaves its checkpoint in S3; the
    cell's history comes down for the cut's decision; a later task trains it on from S3."""
    grid = tmp_path / "demo"
    cell = tiny_cell(grid, "c1", epochs=1)
    cell = replace(cell, plan=Plan([Round(lr=0.003, bce_weight=0.5, num_epochs=1)] * 2))
    (cell_dir(grid, cell) / "plan.json").write_text(cell.plan.model_dump_json())
    runner = runner_for(aws, grid)
    sent = record_calls(runner, "RunTask")
    with ContainerEmulator(aws, trainer_env(aws.endpoint, cache)):
        paused = runner.run(replace(pack_of(cell), rounds=(0, 1)), print)
        rows = len((cell_dir(grid, cell) / "history.csv").read_text().splitlines())
        in_s3 = s3_keys(aws, "demo/cells/c1/")
        ended = runner.run(replace(pack_of(cell), rounds=(1, None)), print)
    assert sent[0]["overrides"]["containerOverrides"][0]["command"][-2:] == ["--until-round", "1"]
    assert "--until-round" not in sent[1]["overrides"]["containerOverrides"][0]["command"]
    assert paused.outcome == "ok" and paused.outcomes["c1"].status == "paused", paused
    assert rows == 2 and "demo/cells/c1/checkpoint.pt" in in_s3 and "demo/cells/c1/metrics.json" not in in_s3
    assert not (cell_dir(grid, cell) / "checkpoint.pt").exists()  # it stays in S3
    assert ended.outcome == "ok" and ended.outcomes["c1"].status == "complete", ended
    log = (cell_dir(grid, cell) / "training.log").read_text()
    assert "paused after 1 rounds" in log and "resumed from checkpoint.pt at repeat 0 round 1 epoch 1" in log
    assert len((cell_dir(grid, cell) / "history.csv").read_text().splitlines()) == 3
