"""The ECS backend: each pack of cells trains as one GPU task of the training image.

The flow picks it with ``backend="ecs"`` and passes its ``ecs`` settings (:class:`EcsSettings`
in flows/ecs/settings.py, the CloudFormation stack's outputs) through; on the CLI they are
``--ecs KEY=VALUE`` pairs (the stack names its cluster and capacity provider itself: take them
from its outputs, as README.md "Running on AWS" shows):

    python -m flows.grid grid-search/demo.yaml --backend ecs --max-cost 5 \
        --ecs cluster=autolabel-Cluster-AbC --ecs capacity_provider=autolabel-CapacityProvider-XyZ \
        --ecs task_definition=autolabel-train --ecs bucket=my-autolabel-cells --ecs prefix=grids

From code (what ``flows.flow`` does with its plan):

    runner = EcsRunner(plan.grid_dir, plan.pricing, plan.ecs)   # flows.plan.prepare.RunPlan
    attempt = runner.run(plan.packs[0], print)                  # blocks until the task has stopped

One launch, step by step:

1. ``options.json`` and ``plan.json`` go up to ``s3://<bucket>/[<prefix>/]<grid>/cells/<id>/``.
   The local folder is the source of a cell's inputs, S3 the source of its progress: a local
   checkpoint is uploaded only where S3 has none, so a stale one never replaces newer progress.
2. ``run_task`` starts one task (count=1; RunTask's limit is 10) on the GPU capacity provider,
   never a launch type, with the container command overridden to the cells' ``s3://`` URIs.
   A task waits in PROVISIONING while the Auto Scaling group scales out from zero; at most
   ``max_parallel`` wait at once, and one that waits past ``provisioning_timeout_s`` is stopped
   and retried.
3. One poller thread per runner (flows/ecs/poller.py) describes every task in flight, 100 ARNs
   per call, and stops (StopTask, SIGTERM) a pack running past its runtime limit.
4. When the task has stopped, the cells' results come down from S3 and the rules of
   ``flows/ecs/rules.py`` classify the outcome; a failure gets the tail of the task's CloudWatch log.

A rerun after the flow was killed waits for the tasks it left running instead of starting
second trainers on the same cells, and a pack already complete in S3 is only downloaded.
Once the packs are done, :meth:`EcsRunner.settle` charges the ledger for the instances, as
AWS bills them (flows/ecs/billing.py).

Credentials come from a prefect-aws ``AwsCredentials`` block when one is named, else from
boto3's default chain; ``AWS_ENDPOINT_URL`` is honoured (the tests point it at moto). The
container needs only its task role for the bucket: no Prefect API key, and no credentials
in its command, its environment, the cell folders or the logs.
"""

from __future__ import annotations

import datetime as dt
import random
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from autolabel.celldir import is_complete
from autolabel.control import CHECKPOINT_ENV
from autolabel.storage import join
from flows.cost.estimate import Pack, Pricing
from flows.ecs.aws import aws_session, client_config
from flows.ecs.billing import InstanceUse, bill_instances, read_instances
from flows.ecs.poller import DESCRIBE_BATCH, Poller, Watch
from flows.ecs.rules import (
    classify_error,
    classify_failures,
    classify_task,
    essential_container,
    is_throttling,
    match_rule,
    redact,
    task_seconds,
)
from flows.ecs.settings import EcsSettings
from flows.ecs.staging import download_results, upload_inputs
from flows.run.ledger import Ledger
from flows.run.outcomes import Attempt, Log, Outcome, finish_attempt
from flows.spec.cells import Cell, cell_dir

# ----------------------------------------------------------------------------- names


def started_by(grid_prefix: str) -> str:
    # startedBy allows letters, digits, '-', '_' and '/' (128 at most); list_tasks filters by it.
    return ("autolabel-" + re.sub(r"[^A-Za-z0-9_/-]", "-", grid_prefix))[:128]


STOPPED_BY_FLOW = "the flow was asked to stop; a rerun resumes from the S3 checkpoint"


class EcsRunner:
    """Runs packs of cells as ECS tasks of the training image on a GPU capacity provider.

    Settings come as an :class:`EcsSettings` or as its fields by keyword (the flow's ``ecs`` dict).
    """

    launch_tries = 6  # run_task attempts on throttling, after botocore's own retries
    backoff_base_s = 1.0  # first throttling backoff; doubles per try, full jitter
    backoff_cap_s = 60.0

    def __init__(self, grid_dir: Path, pricing: Pricing, settings: EcsSettings):
        """``pricing``: the run's (its plan's): packs at once, the rate each task is charged at, and
        the prices of every type the group may launch (flows.ecs.capacity.price_stack read them in
        the stack's region and zones), which bill the instances. ``settings``: checked."""
        if pricing.max_parallel < 1:
            raise ValueError(f"max_parallel must be at least 1, got {pricing.max_parallel}")
        s = self.settings = settings
        self.pricing = pricing
        self.grid_dir = Path(grid_dir)
        # s3://<bucket>/[<prefix>/]<grid>: the task role may write only under <prefix>.
        self.grid_prefix = "/".join(p.strip("/") for p in (s.prefix, s.grid_prefix or self.grid_dir.name) if p)
        # Validates the bucket name and every prefix segment (no traversal, tame characters).
        self.grid_uri = join(f"s3://{s.bucket}", self.grid_prefix)
        self.max_parallel = max_parallel = pricing.max_parallel
        self.cluster, self.capacity_provider, self.task_definition = s.cluster, s.capacity_provider, s.task_definition
        self.container_name = s.container_name
        self.provisioning_timeout_s, self.poll_interval_s = s.provisioning_timeout_s, s.poll_interval_s
        self.log_location: tuple[str, str] | None = (s.log_group, s.log_stream_prefix or "") if s.log_group else None

        session = aws_session(s.aws_credentials_block)
        config = client_config(s.region or session.region_name)
        self.ecs = session.client("ecs", config=config)
        self.s3 = session.client("s3", config=config)
        self.logs = session.client("logs", config=config)
        self.ec2 = session.client("ec2", config=config)

        self.poller = Poller(self.ecs, self.cluster, max_parallel, self.poll_interval_s, self.provisioning_timeout_s)
        self._lock = threading.Lock()
        self._orphans: dict[tuple[str, ...], str] | None = None  # tasks of earlier runs, by command
        self._adoption_error: AdoptionError | None = None
        self._stopping = threading.Event()  # stop() was called: launch nothing more
        self._uses: dict[str, InstanceUse] = {}  # container instance ARN -> what our tasks did there
        self._run_start: dt.datetime | None = None  # this runner's first launch or adoption

    # ------------------------------------------------------------------ the Runner interface

    def cell_uri(self, cell: Cell | str) -> str:
        """``s3://<bucket>/<grid>/cells/<id>``, validated: a cell id cannot leave the grid prefix."""
        cell_id = cell if isinstance(cell, str) else cell.id
        if cell_id in ("", ".", "..") or "/" in cell_id:
            raise ValueError(f"cell id {cell_id!r}: not a plain name")
        return join(self.grid_uri, "cells", cell_id)

    def run(self, pack: Pack, log: Log, force: bool = False) -> Attempt:
        """Train ``pack`` in one ECS task; block until it stops; download results; classify."""
        from botocore.exceptions import BotoCoreError, ClientError

        cells = list(pack.cells)
        ids = pack.ids
        uris = [self.cell_uri(c) for c in cells]
        # 1. Inputs up; a pack already complete in S3 (a flow killed after its task) costs nothing.
        try:
            for c, uri in zip(cells, uris):
                upload_inputs(self.s3, cell_dir(self.grid_dir, c), uri)
            if not force and all(is_complete(u, self.s3) for u in uris):
                self.download_results(cells, uris)
                log(f"{', '.join(ids)}: already complete in {self.grid_uri}; results downloaded")
                return finish_attempt(self.grid_dir, cells, Attempt(ids, "ok", "complete in S3", exit_code=0))
        except (BotoCoreError, ClientError) as e:
            outcome, why = classify_error(e)
            return self._note(cells, log, Attempt(ids, outcome, f"S3 before launch: {why}"))

        # 2. Launch (or adopt the task an interrupted run left), within the bound on tasks
        #    waiting for capacity.
        self.poller.slots.acquire()
        if self._stopping.is_set():
            self.poller.slots.release()
            return self._note(cells, log, Attempt(ids, "transient", STOPPED_BY_FLOW + "; not launched"))
        with self._lock:
            self._run_start = self._run_start or dt.datetime.now(dt.timezone.utc)
        try:
            arn = self.adopt(uris)
            verb = "still running from an earlier run; waiting for it" if arn else "launched"
            arn = arn or self.launch(uris, pack.flags(force), ids)
        except _LaunchFailed as e:
            self.poller.slots.release()
            return self._note(cells, log, Attempt(ids, e.outcome, e.detail))
        except AdoptionError as e:
            self.poller.slots.release()
            return self._note(cells, log, Attempt(ids, "permanent", str(e)))
        except BaseException:
            self.poller.slots.release()
            raise
        task_id = arn.rsplit("/", 1)[-1]
        self._note(cells, log, None, f"ECS task {task_id} {verb} on {self.capacity_provider}: {' '.join(uris)}")

        # 3. Wait for the shared poller (flows/ecs/poller.py) to see it stop.
        watch = self.poller.watch(arn, self.runtime_limit(pack))
        self.poller.wait(watch)
        return self.finish(cells, uris, watch, log)

    def stop(self) -> None:
        """Ask every running pack to stop; returns at once.

        StopTask, with a reason, on every task this runner started or adopted: ECS sends SIGTERM,
        the trainer checkpoints to S3 within the stop timeout, and a rerun resumes from there.
        """
        self._stopping.set()
        self.poller.stop_all("autolabel: the flow was asked to stop")

    # ------------------------------------------------------------------ steps of run()

    def upload_inputs(self, local: Path, uri: str) -> None:
        upload_inputs(self.s3, local, uri)

    def download_results(self, cells: list[Cell], uris: list[str]) -> None:
        """Everything each trainer wrote except its checkpoint (and model.pt unless download_models)."""
        for c, uri in zip(cells, uris):
            download_results(self.s3, uri, cell_dir(self.grid_dir, c), models=self.settings.download_models)

    def adopt(self, uris: list[str]) -> str | None:
        """The ARN of a task of this grid, started before this runner, that trains exactly ``uris``.

        A flow killed mid-run leaves its tasks running; a rerun waits for them rather than
        starting a second trainer on the same cells. Packs form anew on a rerun (cells finished
        since change how they fill), so a task that trains only some of ``uris`` is waited for
        until it stops, and then the pack launches. When this grid's tasks cannot be listed,
        :class:`AdoptionError` stops the run: launching blind could train a cell twice.
        """
        with self._lock:
            if self._adoption_error is not None:
                raise self._adoption_error  # once failed, every launch of this run is refused
            if self._orphans is None:
                try:
                    self._orphans = self._list_orphans()
                except AdoptionError as e:
                    self._adoption_error = e
                    raise
            arn = self._orphans.pop(tuple(uris), None)
            overlapping = [] if arn else [a for held, a in self._orphans.items() if set(held) & set(uris)]
        for a in overlapping:
            if not self.poller.wait_stopped(a, self._stopping):
                raise _LaunchFailed("transient", STOPPED_BY_FLOW + "; not launched")
        return arn

    def _list_orphans(self) -> dict[tuple[str, ...], str]:
        """This grid's tasks not yet stopped, by their command (``--force`` left out).

        ListTasks: "If you specify startedBy as the filter, it must be the only filter that
        you use" (Amazon ECS API Reference, ListTasks, read 2026-12-01); the real API answers a
        combination with InvalidParameterException. So startedBy goes alone (desiredStatus
        defaults to RUNNING there) and every other condition is checked here.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            pages = self.ecs.get_paginator("list_tasks").paginate(
                cluster=self.cluster, startedBy=started_by(self.grid_prefix))
            arns = [a for page in pages for a in page.get("taskArns", [])]
            tasks = [t for i in range(0, len(arns), DESCRIBE_BATCH)
                     for t in self.ecs.describe_tasks(cluster=self.cluster, tasks=arns[i : i + DESCRIBE_BATCH])["tasks"]]
        except (BotoCoreError, ClientError) as e:
            raise AdoptionError(
                f"cannot list the tasks an earlier run of {self.grid_prefix} left running ({classify_error(e)[1]}); "
                "nothing was launched, since a blind launch could train a cell twice: fix the access and rerun"
            ) from None
        found = {}
        for task in tasks:
            if task.get("lastStatus") == "STOPPED" or task.get("desiredStatus") == "STOPPED":
                continue
            for o in task.get("overrides", {}).get("containerOverrides", []):
                if o.get("name") == self.container_name:
                    found[tuple(a for a in o.get("command", []) if a.startswith("s3://"))] = task["taskArn"]
        return found

    def launch(self, uris: list[str], flags: list[str], ids: list[str]) -> str:
        """run_task once (count=1), retrying throttling with backoff; the task's ARN."""
        from botocore.exceptions import BotoCoreError, ClientError

        params: dict[str, Any] = {
            "cluster": self.cluster,
            "taskDefinition": self.task_definition,
            "count": 1,
            "capacityProviderStrategy": [{"capacityProvider": self.capacity_provider, "weight": 1, "base": 0}],
            "overrides": {"containerOverrides": [
                {"name": self.container_name, "command": [*uris, *flags],
                 # The trainer reads its checkpoint cadence from here (autolabel.train).
                 "environment": [{"name": CHECKPOINT_ENV,
                                  "value": f"{self.settings.checkpoint_every_s:g}"}]},
            ]},
            "startedBy": started_by(self.grid_prefix),
            # Tag values allow spaces, not commas; 256 characters at most.
            "tags": [{"key": "autolabel:grid", "value": self.grid_prefix[:256]},
                     {"key": "autolabel:cells", "value": " ".join(ids)[:256]}],
            "propagateTags": "TASK_DEFINITION",
            # The same token on every try: a retried call that had in fact succeeded starts no second task.
            "clientToken": uuid.uuid4().hex,
        }
        if self.settings.subnets:
            params["networkConfiguration"] = {"awsvpcConfiguration": {
                "subnets": list(self.settings.subnets),
                "securityGroups": list(self.settings.security_groups or []),
                "assignPublicIp": "ENABLED" if self.settings.assign_public_ip else "DISABLED",
            }}
        for attempt in range(self.launch_tries):
            try:
                resp = self.ecs.run_task(**params)
            except (BotoCoreError, ClientError) as e:
                if is_throttling(e) and attempt + 1 < self.launch_tries:
                    time.sleep(self.backoff(attempt))
                    continue
                raise _LaunchFailed(*classify_error(e)) from None
            if resp.get("tasks"):
                return resp["tasks"][0]["taskArn"]
            raise _LaunchFailed(*classify_failures(resp.get("failures", [])))
        raise AssertionError("unreachable")

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter (AWS's recommendation for contended APIs)."""
        return random.uniform(0, min(self.backoff_cap_s, self.backoff_base_s * 2**attempt))

    def runtime_limit(self, pack: Pack) -> float:
        """Seconds a pack may run: ``runtime_limit_s``, else factor x its expected GPU-seconds (as the
        plan priced it) + start-up."""
        s = self.settings
        if s.runtime_limit_s is not None:
            return s.runtime_limit_s
        return s.runtime_limit_factor * pack.gpu_seconds + s.runtime_limit_startup_s

    def finish(self, cells: list[Cell], uris: list[str], watch: Watch, log: Log) -> Attempt:
        """After the stop: results down, outcome classified, cost measured, log tail on failure."""
        from botocore.exceptions import BotoCoreError, ClientError

        task, ids = watch.task, [c.id for c in cells]
        if watch.error is not None:
            outcome, why = watch.error
        elif watch.timed_out:
            rule = match_rule("runner", "PROVISIONING timeout")
            assert rule is not None
            outcome, why = rule.outcome, f"{rule.why} ({self.provisioning_timeout_s:.0f} s); the task was stopped"
        else:
            outcome, why = classify_task(task, self.container_name)
        if watch.stop_asked and outcome != "ok":
            outcome, why = "transient", STOPPED_BY_FLOW
        elif watch.over_limit and outcome != "ok":
            rule = match_rule("runner", "runtime limit")
            assert rule is not None
            outcome, why = rule.outcome, f"{rule.why} ({watch.limit_s:.0f} s); stopped with SIGTERM"
        seconds = task_seconds(task)
        code = essential_container(task, self.container_name).get("exitCode") if task else None
        try:
            self.download_results(cells, uris)
        except (BotoCoreError, ClientError) as e:
            if outcome == "ok":
                outcome, why = "transient", f"results not downloaded: {classify_error(e)[1]}"
        attempt = Attempt(
            ids, outcome, why, exit_code=code, device_seconds=seconds,
            usd=seconds / 3600 * self.pricing.usd_per_gpu_hour,
            extra={"task_arn": watch.arn, "stop_code": task.get("stopCode"),
                   "stopped_reason": task.get("stoppedReason"), "last_status": task.get("lastStatus")},
        )
        self.note_use(task, attempt.usd)
        tail = [] if outcome == "ok" else self.log_tail(watch.arn)
        return self._note(cells, log, attempt, *tail)

    # ------------------------------------------------------------------ instances, as AWS bills them

    def note_use(self, task: dict, usd: float) -> None:
        """Remember which instance a stopped task ran on, when, and what it was charged."""
        ci, started, stopped = task.get("containerInstanceArn"), task.get("startedAt"), task.get("stoppedAt")
        if not (ci and started and stopped):
            return
        with self._lock:
            if ci in self._uses:
                self._uses[ci].add(started, stopped, usd)
            else:
                self._uses[ci] = InstanceUse(started, stopped, usd)

    def settle(self, ledger: Ledger) -> list[dict]:
        """Charge the ledger for the instances this runner's tasks ran on, beyond the tasks' own
        charges (flows/ecs/billing.py); call once the run's packs are done. Returns the entries."""
        from botocore.exceptions import BotoCoreError, ClientError

        with self._lock:
            uses, self._uses = self._uses, {}
            start = self._run_start or dt.datetime.now(dt.timezone.utc)
        if not uses:
            return []
        try:
            described: dict[str, dict] | None = read_instances(self.ecs, self.ec2, self.cluster, list(uses))
        except (BotoCoreError, ClientError):
            described = None  # no ec2:DescribeInstances: the modelled start and tail, marked estimated
        p = self.pricing
        bills = bill_instances(uses, described, start, p.spot, p.price, p.prices)
        for b in bills:
            rest = {k: v for k, v in b.items() if k not in ("instance_id", "seconds", "billed_usd", "tasks_usd")}
            ledger.charge_instance(b["instance_id"], b["seconds"], b["billed_usd"], b["tasks_usd"], **rest)
        return bills

    def log_tail(self, arn: str, lines: int = 40) -> list[str]:
        """The last lines of the task's awslogs stream ``<prefix>/<container>/<task-id>``."""
        from botocore.exceptions import BotoCoreError, ClientError

        where = self._log_location()
        if where is None:
            return ["(no CloudWatch log: the task definition has no awslogs configuration)"]
        group, prefix = where
        stream = "/".join(p for p in (prefix, self.container_name, arn.rsplit("/", 1)[-1]) if p)
        try:
            events = self.logs.get_log_events(
                logGroupName=group, logStreamName=stream, limit=lines, startFromHead=False
            )["events"]
        except (BotoCoreError, ClientError) as e:
            return [f"(no CloudWatch log {group}/{stream}: {classify_error(e)[1]})"]
        return [f"--- last {len(events)} lines of CloudWatch {group} {stream} ---",
                *(redact(e["message"].rstrip()) for e in events)]

    # ------------------------------------------------------------------ small helpers

    def _note(self, cells: list[Cell], log: Log, attempt: Attempt | None, *lines: str) -> Attempt | None:
        """Say what happened in the task log and in each cell's runner.log (as the local runner does);
        an attempt gets each cell's outcome from its files."""
        if attempt is not None:
            finish_attempt(self.grid_dir, cells, attempt)
            lines = (f"ECS {', '.join(attempt.cells)}: {attempt.outcome}: {attempt.detail}"
                     + (f"; ran {attempt.device_seconds:.0f} s, ${attempt.usd:.4f}" if attempt.device_seconds else ""),
                     *lines)  # fmt: skip
        for line in lines:
            log(line)
        for c in cells:
            d = cell_dir(self.grid_dir, c)
            if d.is_dir():
                with open(d / "runner.log", "a") as f:
                    f.writelines(line + "\n" for line in lines)
        return attempt

    def _log_location(self) -> tuple[str, str] | None:
        """(group, stream prefix) of the trainer's awslogs, from the settings or the task definition."""
        if self.log_location is None:
            try:
                td = self.ecs.describe_task_definition(taskDefinition=self.task_definition)["taskDefinition"]
            except Exception:  # noqa: BLE001 - the log tail is a courtesy, never a failure
                return None
            for c in td.get("containerDefinitions", []):
                conf = c.get("logConfiguration") or {}
                if c.get("name") == self.container_name and conf.get("logDriver") == "awslogs":
                    opts = conf.get("options", {})
                    self.log_location = (opts.get("awslogs-group", ""), opts.get("awslogs-stream-prefix", ""))
        return self.log_location if self.log_location and self.log_location[0] else None

class AdoptionError(RuntimeError):
    """This grid's running tasks could not be listed: the run stops rather than risk a second trainer."""


class _LaunchFailed(Exception):
    def __init__(self, outcome: Outcome, detail: str):
        super().__init__(detail)
        self.outcome, self.detail = outcome, detail
