"""Test-side AWS: a moto server over real HTTP, provisioned like the CloudFormation stack, and a
container emulator that plays the ECS agent and Docker for it.

moto's ECS accepts run_task but never runs anything: its tasks sit in RUNNING and walk to
STOPPED as they are described, with exit code 0 and no stop code. The server runs in this
process (``ThreadedMotoServer``), so :class:`ContainerEmulator` works on moto's in-process
backend (``ecs_backends[account][region]``), as the agent would on a real instance:

- a new task goes PROVISIONING -> PENDING -> RUNNING (``startedAt`` set);
- its command override runs as the image's entry point, ``python -m autolabel.train s3://...``,
  a real subprocess against the moto S3, with no Prefect settings in its environment;
- its output goes to CloudWatch Logs, stream ``<prefix>/<container>/<task-id>`` (awslogs);
- the task ends STOPPED with the process's true exit code, ``stoppedAt`` and stop code
  ``EssentialContainerExited``.

Faults are injected here, never in production code: a Spot interruption after a cell's first
checkpoint upload, tasks held in PROVISIONING, placement failures and throttling.

    python -m pytest -q tests/ecs
"""

from __future__ import annotations

import copy
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"
REPO = Path(__file__).resolve().parents[1]
ENTRYPOINT = [sys.executable, "-m", "autolabel.train"]  # the image's ENTRYPOINT
STOP_TIMEOUT_S = 2.0  # SIGTERM -> SIGKILL on a stop (the stack's stopTimeout is 120 s)


@dataclass
class StandIn:
    """The moto-side names the runner needs; ``settings()`` gives the flow's ``ecs`` dict."""

    endpoint: str
    bucket: str = "autolabel-cells"
    cluster: str = "autolabel"
    capacity_provider: str = "autolabel-gpu"
    task_definition: str = "autolabel-trainer"
    container: str = "trainer"
    log_group: str = "/autolabel/trainer"
    stream_prefix: str = "grid"
    container_instances: list[str] = field(default_factory=list)

    @classmethod
    def named(cls, endpoint: str, suffix: str) -> StandIn:
        """Names of their own, so that tests sharing one moto server never see each other's tasks."""
        return cls(endpoint, bucket=f"autolabel-cells-{suffix}", cluster=f"autolabel-{suffix}",
                   capacity_provider=f"autolabel-gpu-{suffix}", task_definition=f"autolabel-trainer-{suffix}",
                   log_group=f"/autolabel/trainer-{suffix}")

    def settings(self, **override: Any) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "capacity_provider": self.capacity_provider,
            "task_definition": self.task_definition,
            "bucket": self.bucket,
            "container_name": self.container,
            **override,
        }

    def client(self, service: str, region: str = REGION):
        import boto3

        return boto3.client(service, region_name=region, endpoint_url=self.endpoint)

    def spot_only(self, zones: list[str] | None = None, region: str = REGION) -> None:
        """The group launches Spot only (deployed with OnDemandPercentageAboveBaseCapacity=0), in ``zones``."""
        self.client("autoscaling", region).update_auto_scaling_group(
            AutoScalingGroupName=self.capacity_provider, **({"AvailabilityZones": zones} if zones else {}),
            MixedInstancesPolicy={
                "LaunchTemplate": {"LaunchTemplateSpecification": {"LaunchTemplateName": self.capacity_provider}},
                "InstancesDistribution": {"OnDemandBaseCapacity": 0, "OnDemandPercentageAboveBaseCapacity": 0}})


# ----------------------------------------------------------------------------- moto server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto():
    """A moto server on a free local port; werkzeug's request lines silenced."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


@lru_cache(maxsize=None)
def any_ami(endpoint: str) -> str:
    """An AMI moto knows (listing them costs a second, so once per server)."""
    import boto3

    return boto3.client("ec2", region_name=REGION, endpoint_url=endpoint).describe_images()["Images"][0]["ImageId"]


def provision(aws: StandIn, instances: int = 2) -> None:
    """What deployments/ creates, in moto: bucket, GPU launch template + Auto Scaling group,
    cluster with its capacity provider, registered container instances, task definition, log group."""
    ec2, asg, ecs = aws.client("ec2"), aws.client("autoscaling"), aws.client("ecs")
    aws.client("s3").create_bucket(Bucket=aws.bucket)
    aws.client("logs").create_log_group(logGroupName=aws.log_group)

    ami = any_ami(aws.endpoint)
    name = aws.capacity_provider
    ec2.create_launch_template(LaunchTemplateName=name,
                               LaunchTemplateData={"ImageId": ami, "InstanceType": "g5.xlarge"})
    asg.create_auto_scaling_group(
        AutoScalingGroupName=name, LaunchTemplate={"LaunchTemplateName": name},
        MinSize=0, MaxSize=instances, DesiredCapacity=instances, AvailabilityZones=[f"{REGION}a"],
    )
    group = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]

    ecs.create_cluster(clusterName=aws.cluster)
    ecs.create_capacity_provider(name=aws.capacity_provider, autoScalingGroupProvider={
        "autoScalingGroupArn": group["AutoScalingGroupARN"],
        "managedScaling": {"status": "ENABLED", "targetCapacity": 100},
        "managedTerminationProtection": "DISABLED",
    })
    ecs.put_cluster_capacity_providers(cluster=aws.cluster, capacityProviders=[aws.capacity_provider],
                                       defaultCapacityProviderStrategy=[])
    for inst in group["Instances"]:
        doc = json.dumps({"instanceId": inst["InstanceId"], "region": REGION, "instanceType": "g5.xlarge"})
        ci = ecs.register_container_instance(cluster=aws.cluster, instanceIdentityDocument=doc)
        aws.container_instances.append(ci["containerInstance"]["containerInstanceArn"])

    ecs.register_task_definition(family=aws.task_definition, requiresCompatibilities=["EC2"], containerDefinitions=[{
        "name": aws.container,
        "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/autolabel-trainer:test",
        "essential": True,
        # moto places by memory only; a small reservation lets ~200 tasks share one instance.
        "memory": 32,
        "resourceRequirements": [{"type": "GPU", "value": "1"}],
        "logConfiguration": {"logDriver": "awslogs", "options": {
            "awslogs-group": aws.log_group, "awslogs-region": REGION, "awslogs-stream-prefix": aws.stream_prefix,
        }},
    }])


def ecs_backend():
    from moto.ecs.models import ecs_backends

    return ecs_backends[ACCOUNT][REGION]


# ----------------------------------------------------------------------------- the emulator


@dataclass
class Run:
    """What the emulator did with one task."""

    arn: str
    command: list[str]
    statuses: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    exit_code: int | None = None
    stop_code: str = ""
    hung: bool = False
    environment: dict[str, str] = field(default_factory=dict)  # the container override's
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def task_id(self) -> str:
        return self.arn.rsplit("/", 1)[-1]


def now() -> datetime:
    return datetime.now(timezone.utc)


class ContainerEmulator:
    """Runs each task moto starts, as the ECS agent and Docker would on a GPU instance.

    ``entrypoint=None`` runs no process: tasks stay RUNNING until :meth:`release`.
    Fault injection: ``hold_provisioning`` keeps new tasks in PROVISIONING; ``spot_cells``
    names cells whose task is Spot-interrupted once, right after its first checkpoint upload;
    ``hang_cells`` those whose trainer hangs (SIGSTOP) once, right after it. A tiny cell trains
    for seconds: a test that injects either asks for a checkpoint after every epoch
    (``checkpoint_every_s=0``); the others keep the stack's interval, and upload a checkpoint
    (214 MB for ResNet-18 and its Adam state) only when the trainer stops.
    """

    def __init__(self, aws: StandIn, env: dict[str, str], entrypoint: list[str] | None = ENTRYPOINT):
        self.aws, self.entrypoint = aws, entrypoint
        # The container gets only what a task role and the image would give it: no PREFECT_* at all.
        self.env = {k: v for k, v in env.items() if not k.startswith("PREFECT_")}
        self.env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.backend = ecs_backend()
        self.s3, self.logs = aws.client("s3"), aws.client("logs")
        self.runs: dict[str, Run] = {}
        self.hold_provisioning = False
        self.spot_cells: set[str] = set()
        self.hang_cells: set[str] = set()
        self.release_code: int | None = None  # set by release() for entrypoint=None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._scan, name="ecs-emulator", daemon=True)

    def __enter__(self) -> ContainerEmulator:
        from moto.moto_api import state_manager

        # moto walks a task to STOPPED a step per describe; here the emulator alone moves it.
        state_manager.set_transition("ecs::task", {"progression": "manual", "times": 10**9})
        self._patch_new_tasks()
        self._list_tasks = enforce_list_tasks_rule()
        self._patch_stop_task()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        from moto.ecs.models import Task
        from moto.moto_api import state_manager

        self._stop.set()
        self._thread.join(5)
        from moto.ecs.responses import EC2ContainerServiceResponse

        state_manager.unset_transition("ecs::task")
        Task.__init__ = self._task_init
        EC2ContainerServiceResponse.list_tasks = self._list_tasks
        del self.backend.stop_task  # the class's own again

    def _patch_new_tasks(self) -> None:
        """ECS tasks start in PROVISIONING with no exit code; moto's start RUNNING with exit code 0."""
        from moto.ecs.models import Task

        self._task_init = init = Task.__init__

        def provisioning(task, *args, **kwargs):
            init(task, *args, **kwargs)
            task.status = "PROVISIONING"
            for c in task.containers:
                c.exitCode = None

        Task.__init__ = provisioning

    def _patch_stop_task(self) -> None:
        """StopTask asks; the task is STOPPED only once its container has exited (stoppedAt then).
        moto marks it STOPPED at once, which would hide the seconds it ran."""
        original = self.backend.stop_task

        def stop_task(cluster_str, task_str, reason):
            task = next((t for arn, t in self.backend.tasks.get(self.aws.cluster, {}).items()
                         if arn.endswith(task_str.split("/")[-1])), None)
            before = task.last_status if task is not None else None
            done = original(cluster_str, task_str, reason)
            if task is not None and before != "STOPPED":
                task.last_status = before
            return done

        self.backend.stop_task = stop_task

    def release(self, exit_code: int = 0) -> None:
        """End every process-less task with ``exit_code``."""
        self.release_code = exit_code

    def wait_for(self, count: int, status: str | None = None, timeout: float = 30.0) -> list[Run]:
        """Block until ``count`` tasks exist (and have reached ``status``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = [r for r in list(self.runs.values()) if status is None or status in r.statuses]
            if len(runs) >= count:
                return runs
            time.sleep(0.05)
        raise TimeoutError(f"{len(self.runs)} tasks, wanted {count} {status or ''}")

    # ------------------------------------------------------------------ the agent loop

    def _scan(self) -> None:
        while not self._stop.is_set():
            for task in list(self.backend.tasks.get(self.aws.cluster, {}).values()):
                if task.task_arn not in self.runs:
                    override = next((o for o in task.overrides.get("containerOverrides", [])
                                     if o.get("name") == self.aws.container), {})
                    run = self.runs[task.task_arn] = Run(task.task_arn, list(override.get("command", [])))
                    run.environment = {e["name"]: e["value"] for e in override.get("environment", [])}
                    self._set(task, run, "PROVISIONING")
                    threading.Thread(target=self._lifecycle, args=(task, run), daemon=True).start()
            time.sleep(0.02)

    def _lifecycle(self, task, run: Run) -> None:
        while self.hold_provisioning and not self._user_stopped(task, run):
            time.sleep(0.02)
        if self._user_stopped(task, run):
            return self._stopped(task, run, None, "UserInitiated", task.stopped_reason or "Task stopped by user")
        self._set(task, run, "PENDING")
        task.started_at = now()
        task.containers[0].last_status = "RUNNING"
        self._set(task, run, "RUNNING")
        if self.entrypoint is None:
            return self._hold_running(task, run)
        self._execute(task, run)

    def _hold_running(self, task, run: Run) -> None:
        while self.release_code is None and not self._user_stopped(task, run):
            time.sleep(0.02)
        if self._user_stopped(task, run):
            return self._stopped(task, run, 143, "UserInitiated", task.stopped_reason)
        self._stopped(task, run, self.release_code, "EssentialContainerExited", "Essential container in task exited")

    def _execute(self, task, run: Run) -> None:
        """Run the entry point with the command override; Spot-kill it if asked."""
        proc = subprocess.Popen([*self.entrypoint, *run.command], cwd=REPO, env={**self.env, **run.environment},
                                text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        reader = threading.Thread(target=lambda: run.lines.extend(line.rstrip("\n") for line in proc.stdout))
        reader.start()
        spot = next((c for c in self.spot_cells if any(u.rstrip("/").endswith("/" + c) for u in run.command)), None)
        hang = next((c for c in self.hang_cells if any(u.rstrip("/").endswith("/" + c) for u in run.command)), None)
        interrupted = user = False
        term_at = None
        while proc.poll() is None:
            if spot and self._has_checkpoint(run.command, spot):
                self.spot_cells.discard(spot)
                proc.kill()  # a reclaimed instance gives the container no chance to finish
                interrupted = True
            if hang and self._has_checkpoint(run.command, hang):
                self.hang_cells.discard(hang)
                hang = None
                proc.send_signal(signal.SIGSTOP)  # hung: alive, holding its GPU, doing nothing
                run.hung = True
            if self._user_stopped(task, run) and term_at is None:
                proc.terminate()  # docker stop: SIGTERM, then SIGKILL after the stop timeout
                term_at, user = time.monotonic(), True
            if term_at is not None and time.monotonic() - term_at > STOP_TIMEOUT_S:
                proc.kill()
            time.sleep(0.02)
        reader.join()
        code = proc.wait()
        code = 128 - code if code < 0 else code  # Docker reports death by signal N as 128 + N
        if interrupted:
            self._stopped(task, run, None, "SpotInterruption", "Your Spot Task was interrupted.")
        elif user:
            self._stopped(task, run, code, "UserInitiated", task.stopped_reason)
        else:
            self._stopped(task, run, code, "EssentialContainerExited", "Essential container in task exited")

    def _has_checkpoint(self, command: list[str], cell: str) -> bool:
        uri = next(u for u in command if u.rstrip("/").endswith("/" + cell))
        bucket, _, key = uri[len("s3://") :].partition("/")
        try:
            self.s3.head_object(Bucket=bucket, Key=key.rstrip("/") + "/checkpoint.pt")
            return True
        except Exception:  # noqa: BLE001 - not there yet
            return False

    # ------------------------------------------------------------------ state on the backend

    def _set(self, task, run: Run, status: str) -> None:
        task.status = status
        run.statuses.append(status)

    def _user_stopped(self, task, run: Run) -> bool:
        # moto's stop_task marks the task STOPPED at once; the emulator then finishes the job.
        return task.desired_status == "STOPPED" and not run.done.is_set()

    def _stopped(self, task, run: Run, exit_code: int | None, stop_code: str, reason: str) -> None:
        """Write the logs, then mark the task STOPPED as ECS reports it (logs first, as awslogs does).

        The stopped task is a new object swapped into moto's table in one step: moto serializes a
        task attribute by attribute, so changing the live one could show STOPPED with the old exit code.
        """
        self._ship_logs(run)
        user = stop_code == "UserInitiated"
        done, container = copy.copy(task), copy.copy(task.containers[0])
        container.exitCode = exit_code
        container.last_status = "STOPPED"
        if exit_code is None and not user:
            container.reason = "Host EC2 instance terminated"
        done.containers = [container]
        done.stop_code, done.stopped_reason = stop_code, reason
        done.stopping_at = done.stopped_at = now()
        done.desired_status = "STOPPED"
        done.status = "STOPPED"
        if not user and task.container_instance_arn:
            # moto reserved the instance's CPU/memory at run_task; a real agent frees them at exit.
            ci = self.backend.container_instances[self.aws.cluster][task.container_instance_arn.split("/")[-1]]
            self.backend.update_container_instance_resources(ci, task.resource_requirements, removing=True)
        run.exit_code, run.stop_code = exit_code, stop_code
        run.statuses.append("STOPPED")
        self.backend.tasks[self.aws.cluster][task.task_arn] = done
        run.done.set()

    def _ship_logs(self, run: Run) -> None:
        if not run.lines:
            return
        stream = f"{self.aws.stream_prefix}/{self.aws.container}/{run.task_id}"
        self.logs.create_log_stream(logGroupName=self.aws.log_group, logStreamName=stream)
        t = int(time.time() * 1000)
        self.logs.put_log_events(logGroupName=self.aws.log_group, logStreamName=stream,
                                 logEvents=[{"timestamp": t, "message": line or " "} for line in run.lines])


# ----------------------------------------------------------------------------- API rules moto lacks


LIST_TASKS_FILTERS = ("containerInstance", "family", "serviceName", "desiredStatus", "launchType")


def enforce_list_tasks_rule():
    """ListTasks as AWS documents it: "If you specify startedBy as the filter, it must be the only
    filter that you use" (Amazon ECS API Reference, ListTasks, read 2026-12-01); the real API
    answers otherwise with InvalidParameterException. moto filters silently. Returns the original."""
    from moto.core.exceptions import JsonRESTError
    from moto.ecs.responses import EC2ContainerServiceResponse

    original = EC2ContainerServiceResponse.list_tasks

    def list_tasks(self):
        others = [f for f in LIST_TASKS_FILTERS if self._get_param(f) is not None]
        if self._get_param("startedBy") is not None and others:
            raise JsonRESTError("InvalidParameterException",
                                f"cannot specify startedBy with other arguments ({', '.join(others)})")
        return original(self)

    EC2ContainerServiceResponse.list_tasks = list_tasks
    return original


# ----------------------------------------------------------------------------- API faults


def fail_placements(monkeypatch, aws: StandIn, reason: str = "RESOURCE:GPU", times: int = 1) -> list[int]:
    """The next ``times`` run_task calls place nothing and answer ``failures`` as ECS does."""
    from moto.core.responses import ActionResult
    from moto.ecs.responses import EC2ContainerServiceResponse

    original = EC2ContainerServiceResponse.run_task
    calls = [0]

    def run_task(self):
        calls[0] += 1
        if calls[0] <= times:
            return ActionResult({"tasks": [], "failures": [{"arn": aws.container_instances[0], "reason": reason}]})
        return original(self)

    monkeypatch.setattr(EC2ContainerServiceResponse, "run_task", run_task)
    return calls


def deny_list_tasks(monkeypatch) -> None:
    """ListTasks is refused, as for credentials without ecs:ListTasks."""
    from moto.core.exceptions import JsonRESTError

    def list_tasks(*args, **kwargs):
        raise JsonRESTError("AccessDeniedException", "User is not authorized to perform: ecs:ListTasks")

    monkeypatch.setattr(ecs_backend(), "list_tasks", list_tasks)


def throttle_run_task(monkeypatch, times: int) -> list[int]:
    """The next ``times`` RunTask calls are refused with ThrottlingException ("Rate exceeded")."""
    from moto.core.exceptions import JsonRESTError

    backend = ecs_backend()
    original = backend.run_task
    calls = [0]

    def run_task(*args, **kwargs):
        calls[0] += 1
        if calls[0] <= times:
            raise JsonRESTError("ThrottlingException", "Rate exceeded")
        return original(*args, **kwargs)

    monkeypatch.setattr(backend, "run_task", run_task)
    return calls


def trainer_env(endpoint: str, cache: Path) -> dict[str, str]:
    """The environment a task role and the image give the trainer, pointed at moto."""
    env = dict(os.environ)
    env.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_DEFAULT_REGION=REGION, AUTOLABEL_CACHE=str(cache))
    return env
