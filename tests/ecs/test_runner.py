"""The ECS backend (flows/ecs/runner.py) against a local moto server over real HTTP; no AWS.

    python -m pytest -q tests/test_ecs.py            # everything (~1-2 min on 2 cores)
    python -m pytest -q tests/test_ecs.py -m "not slow"

tests/ecs_emulator.py plays the ECS agent: it runs each started task's command as the real
``python -m autolabel.train s3://...`` and stops the task with its true exit code.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

import pytest

from autolabel.celldir import UMASK
from autolabel.options import (
    CellOptions,
    ExplicitPartition,
    Plan,
    Round,
    SyntheticDataset,
)
from flows.cost import estimate
from flows.ecs import aws as aws_mod
from flows.ecs.runner import EcsRunner
from flows.ecs.settings import CHECKPOINT_EVERY_S, EcsSettings, parse_ecs_pairs
from flows.spec.cells import Cell, cell_dir
from tests.conftest import pack_of, pricing_for
from tests.ecs_emulator import (
    REGION,
    ContainerEmulator,
    StandIn,
    deny_list_tasks,
    fail_placements,
    throttle_run_task,
    trainer_env,
)

PRICE = 1.006  # g5.xlarge on-demand, $/h, us-east-1 (AWS EC2 price list, June 2026; flows.cost.prices)
EPOCH_ROW = re.compile(r"^\s*\d+\s+\d+\s+\d+\s+\d+\.\d+\s+\d+\s")  # a line of the trainer's epoch table


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def cache(tmp_path_factory) -> Path:
    # One cache for the session (conftest.py sets it): the cohort is generated once.
    return Path(os.environ.get("AUTOLABEL_CACHE") or tmp_path_factory.getbasetemp() / "autolabel-cache")


def tiny_cell(grid_dir: Path, cid: str, epochs: int = 2, partition=0.25) -> Cell:
    """A cell small enough to train in seconds on one CPU thread, written to its directory."""
    options = CellOptions(device="cpu", partition=partition, batch_size=4,
                          dataset=SyntheticDataset(subjects=16, rows=32, cols=64))
    plan = Plan([Round(lr=0.003, bce_weight=0.5, num_epochs=epochs)])
    cell = Cell(id=cid, label=cid, options=options, plan=plan)
    d = cell_dir(grid_dir, cell)
    d.mkdir(parents=True, exist_ok=True)
    (d / "options.json").write_text(options.model_dump_json(indent=2))
    (d / "plan.json").write_text(plan.model_dump_json(indent=2))
    return cell


def runner_for(aws: StandIn, grid_dir: Path, max_parallel: int = 4, **override) -> EcsRunner:
    settings = aws.settings(poll_interval_s=0.1, **override)
    runner = EcsRunner(grid_dir, pricing_for("ecs", max_parallel, PRICE), EcsSettings.parse(settings))
    runner.backoff_base_s = 0.01
    return runner


def record_calls(runner: EcsRunner, operation: str) -> list[dict]:
    """Every request ``runner`` makes for ``operation``, as botocore sends it."""
    seen: list[dict] = []
    runner.ecs.meta.events.register(f"provide-client-params.ecs.{operation}",
                                    lambda params, **_: seen.append(dict(params)))
    return seen


def run_in_threads(runner: EcsRunner, packs: list[list[Cell]], force: bool = False) -> tuple[list, list[str], list]:
    attempts: list = [None] * len(packs)
    lines: list[str] = []

    def one(i: int) -> None:
        attempts[i] = runner.run(pack_of(*packs[i], index=i), lines.append, force=force)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(packs))]
    for t in threads:
        t.start()
    return attempts, lines, threads


def s3_keys(aws: StandIn, prefix: str) -> set[str]:
    pages = aws.client("s3").get_paginator("list_objects_v2").paginate(Bucket=aws.bucket, Prefix=prefix)
    return {o["Key"] for p in pages for o in p.get("Contents", [])}


# ----------------------------------------------------------------------------- URIs, settings


def test_uris_are_validated(aws, tmp_path):
    runner = runner_for(aws, tmp_path / "demo")
    assert runner.cell_uri("abc123") == f"s3://{aws.bucket}/demo/cells/abc123"
    for bad in ("..", "a/b", "", "a b", "x\\..\\y"):
        with pytest.raises(ValueError):
            runner.cell_uri(bad)
    for settings in ({"bucket": "Bad_Bucket"}, {"bucket": "ab"}, {"grid_prefix": "../elsewhere"},
                     {"grid_prefix": "grids/./x"}, {"grid_prefix": "with space"}):
        with pytest.raises(ValueError):
            runner_for(aws, tmp_path / "demo", **settings)
    assert runner_for(aws, tmp_path / "demo", grid_prefix="team/grids/demo").cell_uri("c1") == \
        f"s3://{aws.bucket}/team/grids/demo/cells/c1"
    # The stack's task role may write only under its CellsPrefix: the `prefix` setting.
    assert runner_for(aws, tmp_path / "demo", prefix="grids").cell_uri("c1") == \
        f"s3://{aws.bucket}/grids/demo/cells/c1"
    with pytest.raises(ValueError):
        runner_for(aws, tmp_path / "demo", prefix="../other")


def test_bad_settings_are_all_reported_at_once():
    with pytest.raises(ValueError) as e:
        EcsSettings.parse({"clustr": "x", "bucket": "Bad_Bucket", "capacity_provider": "gpu",
                           "task_definition": "t", "prefix": "../x", "poll_interval_s": 0})
    lines = str(e.value).splitlines()
    assert [line.split(":")[0] for line in lines] == \
        ["ecs.cluster", "ecs.bucket", "ecs.prefix", "ecs.poll_interval_s", "ecs.clustr"]
    # The CLI's --ecs KEY=VALUE pairs give the same dict.
    assert parse_ecs_pairs(["cluster=c", "capacity-provider=gpu", "task_definition=t", "bucket=cells",
                            "subnets=subnet-1,subnet-2", "poll_interval_s=2"]) == {
        "cluster": "c", "capacity_provider": "gpu", "task_definition": "t", "bucket": "cells",
        "subnets": ["subnet-1", "subnet-2"], "poll_interval_s": 2.0}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_ecs_pairs(["cluster"])
    # Prefect variables left empty mean "not set".
    assert EcsSettings.parse({"cluster": "c", "capacity_provider": "gpu", "task_definition": "t",
                              "bucket": "cells", "region": "", "prefix": ""}).prefix is None


# ----------------------------------------------------------------------------- launching


def test_run_task_request_and_cost(aws, tmp_path):
    grid = tmp_path / "demo"
    cells = [tiny_cell(grid, "c1"), tiny_cell(grid, "c2")]
    runner = runner_for(aws, grid)
    sent = record_calls(runner, "RunTask")
    with ContainerEmulator(aws, trainer_env(aws.endpoint, tmp_path), entrypoint=None) as emu:
        attempts, lines, threads = run_in_threads(runner, [cells], force=True)
        emu.wait_for(1, "RUNNING")
        time.sleep(0.3)  # bill a little runtime
        emu.release(0)
        threads[0].join(10)
    attempt = attempts[0]
    assert attempt.outcome == "ok" and attempt.cells == ["c1", "c2"], attempt
    assert 0.3 <= attempt.device_seconds < 10
    assert attempt.usd == pytest.approx(attempt.device_seconds / 3600 * PRICE)

    (req,) = sent
    assert "launchType" not in req and req["count"] == 1
    assert req["capacityProviderStrategy"] == [{"capacityProvider": aws.capacity_provider, "weight": 1, "base": 0}]
    assert req["overrides"]["containerOverrides"] == [{"name": "trainer", "command": [
        f"s3://{aws.bucket}/demo/cells/c1", f"s3://{aws.bucket}/demo/cells/c2", "--force"],
        "environment": [{"name": "AUTOLABEL_CHECKPOINT_EVERY_S", "value": f"{CHECKPOINT_EVERY_S:g}"}]}]  # the default
    assert req["startedBy"] == "autolabel-demo" and req["propagateTags"] == "TASK_DEFINITION"
    assert {"key": "autolabel:cells", "value": "c1 c2"} in req["tags"]
    assert "networkConfiguration" not in req
    # Inputs went up; nothing the trainer did not write came back down.
    assert s3_keys(aws, "demo/cells/c1/") == {"demo/cells/c1/options.json", "demo/cells/c1/plan.json"}
    assert "ECS task" in (grid / "cells" / "c1" / "runner.log").read_text()


def test_awsvpc_network_configuration_is_sent_when_subnets_are_given(aws, tmp_path):
    grid = tmp_path / "demo"
    runner = runner_for(aws, grid, subnets=["subnet-0abc"], security_groups=["sg-0abc"])
    sent = record_calls(runner, "RunTask")
    with ContainerEmulator(aws, trainer_env(aws.endpoint, tmp_path), entrypoint=None) as emu:
        emu.release(0)
        assert runner.run(pack_of(tiny_cell(grid, "c1")), print).outcome == "ok"
    assert sent[0]["networkConfiguration"] == {"awsvpcConfiguration": {
        "subnets": ["subnet-0abc"], "securityGroups": ["sg-0abc"], "assignPublicIp": "DISABLED"}}


@pytest.mark.slow
def test_one_poller_batches_describe_tasks_by_100(aws, tmp_path):
    grid = tmp_path / "demo"
    cells = [tiny_cell(grid, f"c{i:03d}") for i in range(150)]
    runner = runner_for(aws, grid, max_parallel=150)
    described = record_calls(runner, "DescribeTasks")
    with ContainerEmulator(aws, trainer_env(aws.endpoint, tmp_path), entrypoint=None) as emu:
        attempts, _, threads = run_in_threads(runner, [[c] for c in cells])
        emu.wait_for(150, "RUNNING", timeout=90)
        pollers = {t.ident for t in threading.enumerate() if t.name == "ecs-poller"}
        n = len(described)
        deadline = time.monotonic() + 10
        while not any(len(d["tasks"]) == 100 for d in described[n:]) and time.monotonic() < deadline:
            time.sleep(0.05)
        emu.release(0)
        for t in threads:
            t.join(30)
    sizes = [len(d["tasks"]) for d in described]
    assert max(sizes) == 100 and all(0 < s <= 100 for s in sizes)
    assert len(pollers) == 1, "one poller per runner, not one per task"
    assert all(a.outcome == "ok" for a in attempts), [a for a in attempts if a is None or a.outcome != "ok"][:3]
    # 150 tasks in flight cost two calls per poll round, not 150.
    assert len(described) < 150


def test_provisioning_is_bounded_by_max_parallel(aws, tmp_path):
    grid = tmp_path / "demo"
    cells = [tiny_cell(grid, f"c{i}") for i in range(4)]
    runner = runner_for(aws, grid, max_parallel=2)
    with ContainerEmulator(aws, trainer_env(aws.endpoint, tmp_path), entrypoint=None) as emu:
        emu.hold_provisioning = True
        attempts, _, threads = run_in_threads(runner, [[c] for c in cells])
        emu.wait_for(2)
        time.sleep(0.5)
        assert len(emu.runs) == 2, "no more than max_parallel tasks wait for capacity"
        emu.hold_provisioning = False  # capacity arrives: the two start, the next two launch
        emu.wait_for(4, "RUNNING")
        emu.release(0)
        for t in threads:
            t.join(10)
    assert [a.outcome for a in attempts] == ["ok"] * 4


def test_provisioning_timeout_stops_the_task_and_is_transient(aws, tmp_path):
    grid = tmp_path / "demo"
    runner = runner_for(aws, grid, provisioning_timeout_s=0.5)
    with ContainerEmulator(aws, trainer_env(aws.endpoint, tmp_path), entrypoint=None) as emu:
        emu.hold_provisioning = True
        attempt = runner.run(pack_of(tiny_cell(grid, "c1")), print)
        (run,) = emu.wait_for(1, "STOPPED")
    assert attempt.outcome == "transient" and "provisioning_timeout_s" in attempt.detail
    assert attempt.device_seconds == 0 and attempt.usd == 0
    assert run.stop_code == "UserInitiated" and "RUNNING" not in run.statuses


def test_placement_failure_is_transient_then_runs(aws, tmp_path, monkeypatch):
    grid = tmp_path / "demo"
    runner = runner_for(aws, grid)
    calls = fail_placements(monkeypatch, aws, "RESOURCE:GPU")
    with ContainerEmulator(aws, trainer_env(aws.endpoint, tmp_path), entrypoint=None) as emu:
        emu.release(0)
        first = runner.run(pack_of(tiny_cell(grid, "c1")), print)
        second = runner.run(pack_of(tiny_cell(grid, "c1")), print)
    assert first.outcome == "transient" and "RESOURCE:GPU" in first.detail and first.usd == 0
    assert second.outcome == "ok" and calls[0] == 2


def test_throttling_is_retried_with_backoff(aws, tmp_path, monkeypatch):
    # botocore retries once itself (2 attempts per call); our loop covers the rest.
    monkeypatch.setattr(aws_mod, "BOTO_RETRIES", {"mode": "standard", "max_attempts": 2})
    grid = tmp_path / "demo"
    runner = runner_for(aws, grid)
    calls = throttle_run_task(monkeypatch, times=3)
    with ContainerEmulator(aws, trainer_env(aws.endpoint, tmp_path), entrypoint=None) as emu:
        emu.release(0)
        attempt = runner.run(pack_of(tiny_cell(grid, "c1")), print)
        assert attempt.outcome == "ok", attempt
        assert calls[0] == 4 and len(emu.runs) == 1

        runner.launch_tries = 1
        calls[0] = -10  # throttled for good now
        attempt = runner.run(pack_of(tiny_cell(grid, "c2")), print)
    assert attempt.outcome == "transient" and "throttled" in attempt.detail


@pytest.mark.parametrize("setting, says", [({"cluster": "missing"}, "no such cluster"),
                                           ({"task_definition": "missing:7"}, "no such task definition")])
def test_missing_cluster_or_task_definition_is_permanent(aws, tmp_path, setting, says):
    grid = tmp_path / "demo"
    attempt = runner_for(aws, grid, **setting).run(pack_of(tiny_cell(grid, "c1")), print)
    assert attempt.outcome == "permanent" and says in attempt.detail


def test_pack_complete_in_s3_is_downloaded_without_a_launch(aws, tmp_path):
    grid = tmp_path / "demo"
    cell = tiny_cell(grid, "c1")
    s3 = aws.client("s3")
    s3.put_object(Bucket=aws.bucket, Key="demo/cells/c1/metrics.json", Body=b'{"status": "complete"}')
    s3.put_object(Bucket=aws.bucket, Key="demo/cells/c1/checkpoint.pt", Body=b"big")
    runner = runner_for(aws, grid)
    sent = record_calls(runner, "RunTask")
    attempt = runner.run(pack_of(cell), print)
    assert attempt.outcome == "ok" and not sent
    metrics = cell_dir(grid, cell) / "metrics.json"
    assert metrics.is_file() and not (cell_dir(grid, cell) / "checkpoint.pt").exists()
    # A plain file's permissions (the lab's group reads results), not a temporary file's 0600.
    assert metrics.stat().st_mode & 0o777 == 0o666 & ~UMASK
    assert not [p.name for p in cell_dir(grid, cell).iterdir() if p.name.startswith(".")], "no temporary left"


def test_local_checkpoint_never_replaces_newer_s3_progress(aws, tmp_path):
    grid = tmp_path / "demo"
    cell = tiny_cell(grid, "c1")
    (cell_dir(grid, cell) / "checkpoint.pt").write_bytes(b"stale local")
    s3 = aws.client("s3")
    runner = runner_for(aws, grid)
    runner.upload_inputs(cell_dir(grid, cell), runner.cell_uri(cell))
    assert s3.get_object(Bucket=aws.bucket, Key="demo/cells/c1/checkpoint.pt")["Body"].read() == b"stale local"
    s3.put_object(Bucket=aws.bucket, Key="demo/cells/c1/checkpoint.pt", Body=b"newer in S3")
    runner.upload_inputs(cell_dir(grid, cell), runner.cell_uri(cell))
    assert s3.get_object(Bucket=aws.bucket, Key="demo/cells/c1/checkpoint.pt")["Body"].read() == b"newer in S3"


def test_a_rerun_after_a_killed_flow_adopts_its_tasks_and_starts_none_twice(aws, tmp_path):
    """Mid-grid, the flow dies: c0 is complete in S3, c1 and c2 train, c3's task has stopped.
    The rerun, under ListTasks' documented rule (the emulator refuses startedBy with other
    filters), waits for c1 and c2, downloads c0 and launches only c3."""
    grid = tmp_path / "demo"
    cells = [tiny_cell(grid, f"c{i}") for i in range(4)]
    aws.client("s3").put_object(Bucket=aws.bucket, Key="demo/cells/c0/metrics.json", Body=b'{"status": "complete"}')
    killed_flow = runner_for(aws, grid)
    with ContainerEmulator(aws, trainer_env(aws.endpoint, tmp_path), entrypoint=None) as emu:
        orphans = []
        for c in cells[1:]:
            killed_flow.upload_inputs(cell_dir(grid, c), killed_flow.cell_uri(c))
            orphans.append(killed_flow.launch([killed_flow.cell_uri(c)], [], [c.id]))
        emu.wait_for(3, "RUNNING")
        aws.client("ecs").stop_task(cluster=aws.cluster, task=orphans[2], reason="test: stopped earlier")
        emu.wait_for(1, "STOPPED")
        # ... and the flow died here.
        rerun = runner_for(aws, grid)
        sent = record_calls(rerun, "RunTask")
        listed = record_calls(rerun, "ListTasks")

        def release_once_adopted() -> None:
            # Not on a timer: under load the rerun may look for orphans only after a delay.
            deadline = time.monotonic() + 60
            while not all(a in rerun.poller.watches for a in orphans[:2]) and time.monotonic() < deadline:
                time.sleep(0.02)
            emu.release(0)

        threading.Thread(target=release_once_adopted, daemon=True).start()
        attempts, _, threads = run_in_threads(rerun, [[c] for c in cells])
        for t in threads:
            t.join(60)
    assert [a.outcome for a in attempts] == ["ok"] * 4, attempts
    assert [a.extra.get("task_arn") for a in attempts[1:3]] == orphans[:2]
    assert len(sent) == 1 and sent[0]["overrides"]["containerOverrides"][0]["command"][0].endswith("/c3")
    per_cell = {c.id: sum(r.command[0].endswith("/" + c.id) for r in emu.runs.values()) for c in cells}
    assert per_cell == {"c0": 0, "c1": 1, "c2": 1, "c3": 2}, "no cell has a second task running"
    assert listed and all(set(p) == {"cluster", "startedBy"} for p in listed), listed


def test_a_rerun_waits_for_an_earlier_task_that_holds_some_of_its_cells(aws, tmp_path):
    """Packs fill anew on a rerun: a killed flow's task trains c0 and c1, the rerun's pack is c1 and
    c2. The pack launches only once that task has stopped, never beside it."""
    grid = tmp_path / "demo"
    cells = [tiny_cell(grid, f"c{i}") for i in range(3)]
    killed_flow = runner_for(aws, grid)
    with ContainerEmulator(aws, trainer_env(aws.endpoint, tmp_path), entrypoint=None) as emu:
        for c in cells:
            killed_flow.upload_inputs(cell_dir(grid, c), killed_flow.cell_uri(c))
        orphan = killed_flow.launch([killed_flow.cell_uri(c) for c in cells[:2]], [], [c.id for c in cells[:2]])
        emu.wait_for(1, "RUNNING")
        rerun = runner_for(aws, grid)
        sent, described = record_calls(rerun, "RunTask"), record_calls(rerun, "DescribeTasks")
        attempts, _, threads = run_in_threads(rerun, [cells[1:]])
        deadline = time.monotonic() + 60
        while sum(orphan in d["tasks"] for d in described) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)  # the rerun has looked at the earlier task three times...
        assert sum(orphan in d["tasks"] for d in described) >= 3 and not sent, "launched beside the earlier task"
        emu.release(0)  # ... and launches once it stops
        for t in threads:
            t.join(60)
    assert attempts[0].outcome == "ok", attempts
    assert len(sent) == 1 and [u.rsplit("/", 1)[-1] for u in sent[0]["overrides"]["containerOverrides"][0]["command"]
                               if u.startswith("s3://")] == ["c1", "c2"]


def test_list_tasks_with_another_filter_is_refused_as_aws_documents(aws, tmp_path):
    with ContainerEmulator(aws, trainer_env(aws.endpoint, tmp_path), entrypoint=None):
        ecs = aws.client("ecs")
        ecs.list_tasks(cluster=aws.cluster, startedBy="autolabel-demo")
        with pytest.raises(ecs.exceptions.InvalidParameterException):
            ecs.list_tasks(cluster=aws.cluster, startedBy="autolabel-demo", desiredStatus="RUNNING")


def test_tasks_that_cannot_be_listed_stop_the_run_without_a_launch(aws, tmp_path, monkeypatch):
    grid = tmp_path / "demo"
    deny_list_tasks(monkeypatch)
    runner = runner_for(aws, grid)
    sent = record_calls(runner, "RunTask")
    lines: list[str] = []
    with ContainerEmulator(aws, trainer_env(aws.endpoint, tmp_path), entrypoint=None):
        first = runner.run(pack_of(tiny_cell(grid, "c1")), lines.append)
        second = runner.run(pack_of(tiny_cell(grid, "c2")), lines.append)
    for a in (first, second):
        assert a.outcome == "permanent" and "cannot list the tasks" in a.detail and "\n" not in a.detail
    assert not sent, "a blind launch could start a second trainer"


# ----------------------------------------------------------------------------- credentials


def no_default_credentials(monkeypatch, tmp_path) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def test_credentials_come_from_an_aws_credentials_block(aws, tmp_path, monkeypatch, prefect_api):
    """prefect_api (conftest.py): blocks are saved to and loaded from a real, temporary Prefect API."""
    from prefect_aws import AwsCredentials

    AwsCredentials(aws_access_key_id="testing", aws_secret_access_key="testing-secret",
                   region_name=REGION).save("ecs-test", overwrite=True)
    no_default_credentials(monkeypatch, tmp_path)
    grid = tmp_path / "demo"
    with ContainerEmulator(aws, trainer_env(aws.endpoint, tmp_path), entrypoint=None) as emu:
        emu.release(0)
        without = runner_for(aws, grid, region=REGION).run(pack_of(tiny_cell(grid, "c1")), print)
        lines: list[str] = []
        attempt = runner_for(aws, grid, aws_credentials_block="ecs-test").run(pack_of(tiny_cell(grid, "c1")), lines.append)
    assert without.outcome == "permanent" and "no AWS credentials" in without.detail
    assert attempt.outcome == "ok", attempt
    # The secret goes nowhere: not in the task's command, the logs or the cell folder.
    (run,) = emu.runs.values()
    written = [*run.command, *lines, *(p.read_text() for p in (grid / "cells" / "c1").iterdir() if p.is_file())]
    assert not any("testing-secret" in w for w in written)


# ----------------------------------------------------------------------------- the real trainer


@pytest.mark.slow
def test_invalid_cell_is_permanent_and_gets_the_log_tail(aws, tmp_path, cache):
    grid = tmp_path / "demo"
    bad = tiny_cell(grid, "bad", partition=ExplicitPartition(train=["s000", "s001"], validation=["nobody"]))
    lines: list[str] = []
    attempt = None
    with ContainerEmulator(aws, trainer_env(aws.endpoint, cache)):
        attempt = runner_for(aws, grid).run(pack_of(bad), lines.append)
    assert attempt.outcome == "permanent" and attempt.exit_code == 2, attempt
    text = "\n".join(lines)
    assert "CloudWatch" in text and "nobody" in text, text
    assert "failed" in (cell_dir(grid, bad) / "metrics.json").read_text()
    for where in [text, *(p.read_text(errors="replace") for p in cell_dir(grid, bad).iterdir() if p.is_file())]:
        assert "testing" not in where.replace("testing:", ""), "no credentials in logs or cell files"


@pytest.mark.slow
def test_a_hung_pack_is_stopped_at_its_runtime_limit_and_resumes_on_retry(aws, tmp_path, cache):
    grid = tmp_path / "demo"
    cell = tiny_cell(grid, "c1", epochs=3)
    with ContainerEmulator(aws, trainer_env(aws.endpoint, cache)) as emu:
        # A Spot loss right after the first checkpoint leaves progress in S3, so the next task
        # hangs at once (the emulator hangs a trainer once a checkpoint exists): a short limit
        # then cannot beat the hang, however loaded this machine is.
        # Tiny cells train for seconds: the first task checkpoints after every epoch, so that the
        # Spot loss meets one; the others keep the stack's interval (only a stop saves).
        emu.spot_cells = {"c1"}
        lost = runner_for(aws, grid, checkpoint_every_s=0).run(pack_of(cell), print)
        emu.hang_cells = {"c1"}
        runner = runner_for(aws, grid, runtime_limit_s=3)
        stops = record_calls(runner, "StopTask")
        hung = runner.run(pack_of(cell), print)
        # The retry under the default limit (3 x expected + 900 s).
        retry = runner_for(aws, grid).run(pack_of(cell), print)
    spot, first, second = emu.runs.values()
    assert lost.outcome == "transient" and "Spot" in lost.detail, lost
    assert first.hung and hung.outcome == "transient" and "runtime limit" in hung.detail, hung
    assert [s["reason"] for s in stops] == ["autolabel: runtime limit 3 s reached"]
    assert hung.device_seconds >= 3 and hung.usd > 0, "the hung time is charged"
    assert retry.outcome == "ok", retry
    assert any("resumed from checkpoint.pt" in line for line in second.lines), second.lines[-5:]
    assert spot.environment == {"AUTOLABEL_CHECKPOINT_EVERY_S": "0"}  # each task gets its runner's interval
    assert second.environment == {"AUTOLABEL_CHECKPOINT_EVERY_S": f"{CHECKPOINT_EVERY_S:g}"}


def test_the_runtime_limit_follows_the_expected_gpu_seconds(aws, tmp_path):
    from flows.cost.cap import make_pricing
    from flows.cost.estimate import cell_gpu_seconds, price_packs

    grid = tmp_path / "demo"
    cells = [tiny_cell(grid, "c1"), tiny_cell(grid, "c2")]
    runner = runner_for(aws, grid, runtime_limit_factor=3, runtime_limit_startup_s=600)
    pack = price_packs(cells, make_pricing("ecs", "g5.xlarge", cells_per_gpu=2))[0]
    expected = sum(cell_gpu_seconds(c, "g5.xlarge", 2) for c in cells)
    assert len(pack.cells) == 2 and pack.gpu_seconds == pytest.approx(expected)  # one pricing for both
    assert runner.runtime_limit(pack) == pytest.approx(3 * expected + 600)
    assert runner_for(aws, grid, runtime_limit_s=7200).runtime_limit(pack) == 7200


# ----------------------------------------------------------------------------- the flow, end to end


def write_spec(tmp: Path, name: str, hyper: dict) -> Path:
    """A demo-style grid: tiny synthetic cohort, 2 rounds of 1 epoch, on the CPU."""
    import yaml

    spec = {
        "name": name,
        "static": {"dataset": {"kind": "synthetic", "seed": 3, "subjects": 16, "rows": 32, "cols": 64},
                   "batch_size": 4, "until": 1, "device": "cpu"},
        "hyper": hyper,
        "plan": [{"num_epochs": 1}, {"num_epochs": 1}],
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.slow
def test_grid_runs_on_ecs_end_to_end_through_faults(aws, tmp_path, cache, monkeypatch, prefect_api):
    """The real flow on backend="ecs": a Spot interruption resumes from S3, a RESOURCE:GPU placement
    failure is retried, an invalid cell fails once and for all, and the rest complete."""
    from flows import flow as grid_mod
    from flows.spec import cells as cells_mod
    from flows.spec import parse as spec_mod
    from flows.summary import rows as rows_mod

    # A fault only the trainer can see (the flow's pre-launch checks pass): an unreadable
    # checkpoint, which the runner uploads with the cell's inputs.
    spec = write_spec(tmp_path, "demo", {"lr": [0.003, 0.006], "partition": [0.25, 0.5]})
    cells = cells_mod.expand(spec_mod.load_spec(spec))
    valid = [c for c in cells if c.options.partition == 0.25]
    invalid = [c for c in cells if c.options.partition == 0.5]
    for c in invalid:
        cell_dir(tmp_path / "demo", c).mkdir(parents=True)
        (cell_dir(tmp_path / "demo", c) / "checkpoint.pt").write_bytes(b"not a checkpoint")
    placements = fail_placements(monkeypatch, aws, "RESOURCE:GPU", times=1)
    monkeypatch.setattr(estimate, "MAX_PACK_CELLS", 1)  # a task per cell: each fault hits one cell

    with ContainerEmulator(aws, trainer_env(aws.endpoint, cache)) as emu:
        emu.spot_cells = {valid[0].id}
        state = grid_mod.grid_search(
            spec=str(spec), backend="ecs", max_parallel=2, cells_per_gpu=1, retries=3, retry_delay_s=0.2,
            ecs=aws.settings(prefix="grids", poll_interval_s=0.2, checkpoint_every_s=0), return_state=True,
        )
    assert state.is_failed(), "an invalid cell fails the flow"
    grid = tmp_path / "demo"
    tasks = {c.id: [r for r in emu.runs.values() if any(u.endswith("/" + c.id) for u in r.command)] for c in cells}

    # The valid cells complete; the Spot-interrupted one resumed from its S3 checkpoint.
    for c in valid:
        d = cell_dir(grid, c)
        assert {"options.json", "plan.json", "metrics.json", "history.csv", "training.log", "model.pt",
                "runner.log"} <= {p.name for p in d.iterdir()}
        assert '"complete"' in (d / "metrics.json").read_text()
    killed, resumed = tasks[valid[0].id]
    assert killed.stop_code == "SpotInterruption" and killed.exit_code is None
    assert any("resumed from checkpoint.pt" in line for line in resumed.lines)
    retrained = sum(bool(EPOCH_ROW.match(line)) for line in resumed.lines)
    assert 0 < retrained < 2, "a restart would retrain both epochs"
    d = cell_dir(grid, valid[0])
    assert len((d / "history.csv").read_text().splitlines()) == 1 + 2  # header + every epoch, once
    assert not (d / "checkpoint.pt").exists(), "S3 holds progress; the checkpoint is not downloaded"
    # The placement failure cost one extra RunTask and was retried.
    assert placements[0] == len(emu.runs) + 1
    # Invalid cells: exit 2, one task each, never retried; the log tail reached runner.log.
    for c in invalid:
        assert [r.exit_code for r in tasks[c.id]] == [2]
        assert "checkpoint.pt: unreadable" in (cell_dir(grid, c) / "runner.log").read_text()

    # The summary has the local backend's shape: one row per cell, the same columns.
    rows = {r["id"]: r for r in json.loads((grid / "summary.json").read_text())["rows"]}
    assert {rows[c.id]["status"] for c in valid} == {"complete"}
    assert all(rows[c.id]["status"].startswith("failed") for c in invalid)
    header = (grid / "summary.csv").read_text().splitlines()[0].split(",")
    assert header == [*rows_mod.HEAD, "lr", "partition", *rows_mod.STRATA, *rows_mod.TAIL,
                      "dice_V1", "dice_V2", "dice_V3", *rows_mod.METRIC_TAIL]
    assert all(rows[c.id]["cost_usd"] > 0 for c in valid), "ECS runtime is billed at the GPU price"
    assert (grid / "summary.md").is_file() and (grid / "best" / "full-area" / "options.json").is_file()
    # The ledger bills the instances the tasks ran on, beyond the tasks' own runtime.
    from flows.run.ledger import Ledger

    ledger = Ledger.open(grid)
    assert ledger.entries("instance") and ledger.spent_usd > sum(ledger.per_cell_usd.values())
    assert not ledger._open, "every reservation and lane hold was released"
    # What lands in S3: each cell's folder under the grid prefix, the results, no checkpoint left.
    keys = s3_keys(aws, "grids/demo/cells/")
    assert f"grids/demo/cells/{valid[1].id}/metrics.json" in keys
    assert not any(k.endswith("checkpoint.pt") for k in keys if valid[0].id in k or valid[1].id in k)


def test_stop_asks_every_task_to_stop_and_launches_nothing_more(aws, tmp_path):
    grid = tmp_path / "demo"
    runner = runner_for(aws, grid)
    stops = record_calls(runner, "StopTask")
    with ContainerEmulator(aws, trainer_env(aws.endpoint, tmp_path), entrypoint=None) as emu:
        attempts, _, threads = run_in_threads(runner, [[tiny_cell(grid, f"c{i}")] for i in range(2)])
        emu.wait_for(2, "RUNNING")
        t0 = time.monotonic()
        runner.stop()
        assert time.monotonic() - t0 < 0.5, "stop() returns at once"
        for t in threads:
            t.join(30)
        late = runner.run(pack_of(tiny_cell(grid, "c9")), print)
    assert sorted(s["task"] for s in stops) == sorted(emu.runs)
    assert all(s["reason"] == "autolabel: the flow was asked to stop" for s in stops)
    assert all(r.stop_code == "UserInitiated" and r.exit_code == 143 for r in emu.runs.values())
    assert [a.outcome for a in attempts] == ["transient"] * 2 and "asked to stop" in attempts[0].detail
    assert late.outcome == "transient" and "not launched" in late.detail and len(emu.runs) == 2


# ----------------------------------------------------------------------------- the ledger, as AWS bills


def test_the_ledger_charges_instance_time_beyond_the_tasks(aws, tmp_path):
    from flows.cost.estimate import IDLE_TAIL_S
    from flows.run.ledger import Ledger

    grid = tmp_path / "demo"
    runner = runner_for(aws, grid, max_parallel=1)
    ledger = Ledger.open(grid)
    with ContainerEmulator(aws, trainer_env(aws.endpoint, tmp_path), entrypoint=None) as emu:
        emu.release(0)
        attempts = [runner.run(pack_of(tiny_cell(grid, c)), print) for c in ("c1", "c2")]
    for a in attempts:
        ledger.charge(a.cells, a.device_seconds, a.usd)
    bills = runner.settle(ledger)
    tasks = sum(a.usd for a in attempts)
    assert bills and all(b["estimated"] and "idle tail" in b["how"] for b in bills), bills
    assert sum(b["seconds"] for b in bills) >= IDLE_TAIL_S * len(bills)
    entries = ledger.entries("instance")
    assert sum(e["tasks_usd"] for e in entries) == pytest.approx(tasks)
    assert ledger.spent_usd == pytest.approx(sum(e["billed_usd"] for e in entries))
    assert ledger.spent_usd > tasks + IDLE_TAIL_S / 3600 * PRICE * 0.99, "the idle tail is billed"
    assert set(ledger.per_cell_usd) == {"c1", "c2"}, "instance time is no cell's"

    # Once scale-in has terminated the instance, EC2's own times replace the model.
    instance = entries[0]["instance_id"]
    aws.client("ec2").terminate_instances(InstanceIds=[instance])
    with ContainerEmulator(aws, trainer_env(aws.endpoint, tmp_path), entrypoint=None) as emu:
        emu.release(0)
        runner.run(pack_of(tiny_cell(grid, "c3")), print)
    bill = next(b for b in runner.settle(ledger) if b["container_instance"] == entries[0]["container_instance"])
    assert not bill["estimated"] and bill["how"].endswith("to termination") and bill["seconds"] < IDLE_TAIL_S


def test_the_in_run_cap_refuses_a_lane_whose_start_and_tail_do_not_fit(aws, tmp_path, prefect_api):
    from prefect import flow

    from flows.cost.cap import make_pricing
    from flows.cost.estimate import lane_usd, price_packs
    from flows.run.launch import StopRequest, launch_packs
    from flows.run.ledger import Ledger
    from flows.run.settings import RunSettings

    grid = tmp_path / "demo"
    pricing = make_pricing("ecs", "g5.xlarge", max_parallel=2, cells_per_gpu=1)
    packs = price_packs([tiny_cell(grid, "c1"), tiny_cell(grid, "c2")], pricing)
    lane = lane_usd(pricing, 0, 2)
    assert lane == pytest.approx(1200 / 3600 * 1.006) and lane_usd(pricing, 1, 2) == lane
    assert [p.lane_usd for p in packs] == [lane, lane], "each pack opens a lane: the plan priced it"
    cells_usd = sum(p.usd for p in packs)
    ledger = Ledger.open(grid, cap_usd=lane + cells_usd)  # every cell fits, one lane's start and tail
    runner = runner_for(aws, grid, max_parallel=2)
    sent = record_calls(runner, "RunTask")

    @flow
    def two_lanes():
        return launch_packs(packs, runner, ledger, StopRequest(runner), RunSettings(retries=0, retry_delay_s=0.1),
                            "two-lanes-progress")

    with ContainerEmulator(aws, trainer_env(aws.endpoint, tmp_path), entrypoint=None) as emu:
        emu.release(0)
        outcomes = two_lanes()
    assert outcomes["c2"].status == "skipped" and outcomes["c2"].reason == "cost cap"
    assert len(sent) == 1
    (skip,) = ledger.entries("skip")
    assert skip["cells"] == ["c2"] and skip["estimate_usd"] == pytest.approx(lane)
    assert ledger.entries("instance"), "the lane's instance was charged at the end"
    assert not ledger._open, "every hold released"