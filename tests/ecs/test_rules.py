"""The ECS outcome table (flows.ecs.rules.RULES) on payloads shaped like the real API's.

    python -m pytest -q tests/test_ecs_classify.py
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from flows.ecs.rules import (
    RULES,
    classify_error,
    classify_failures,
    classify_task,
    is_throttling,
    redact,
    task_seconds,
)

ARN = "arn:aws:ecs:us-east-1:123456789012:task/autolabel/0f3b5a2e9c8d4e7fa1b2c3d4e5f60718"
CI = "arn:aws:ecs:us-east-1:123456789012:container-instance/autolabel/5d2a9c1e7b3f4a6d8e0f1a2b3c4d5e6f"
T0 = datetime(2026, 11, 27, 12, 0, 0, tzinfo=timezone.utc)


def stopped(stop_code: str, reason: str, exit_code: int | None, container_reason: str | None = None,
            started: bool = True, seconds: float = 600.0) -> dict:
    """A describe_tasks entry for a stopped single-container trainer task."""
    container = {
        "containerArn": f"{ARN}/trainer",
        "taskArn": ARN,
        "name": "trainer",
        "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/autolabel-trainer:1.0",
        "lastStatus": "STOPPED",
        "networkInterfaces": [],
        "gpuIds": ["GPU-6a3b1c2d-0000-1111-2222-333344445555"],
    }
    if exit_code is not None:
        container["exitCode"] = exit_code
    if container_reason:
        container["reason"] = container_reason
    task = {
        "taskArn": ARN,
        "clusterArn": "arn:aws:ecs:us-east-1:123456789012:cluster/autolabel",
        "taskDefinitionArn": "arn:aws:ecs:us-east-1:123456789012:task-definition/autolabel-trainer:3",
        "containerInstanceArn": CI,
        "capacityProviderName": "autolabel-gpu",
        "lastStatus": "STOPPED",
        "desiredStatus": "STOPPED",
        "containers": [container],
        "createdAt": T0,
        "stopCode": stop_code,
        "stoppedReason": reason,
        "stoppingAt": T0 + timedelta(seconds=seconds),
        "stoppedAt": T0 + timedelta(seconds=seconds + 5),
        "startedBy": "autolabel-demo",
        "group": "family:autolabel-trainer",
    }
    if started:
        task["startedAt"] = T0 + timedelta(seconds=5)
    return task


def client_error(code: str, message: str, op: str = "RunTask", status: int = 400) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, op)


# ----------------------------------------------------------------------------- stopped tasks


@pytest.mark.parametrize(
    "task, outcome, says",
    [
        (stopped("EssentialContainerExited", "Essential container in task exited", 0), "ok", "complete"),
        (stopped("EssentialContainerExited", "Essential container in task exited", 2), "permanent", "exit 2"),
        (stopped("EssentialContainerExited", "Essential container in task exited", 3), "permanent", "diverged"),
        (stopped("EssentialContainerExited", "Essential container in task exited", 1), "permanent", "exit 1"),
        (stopped("EssentialContainerExited", "Essential container in task exited", 137,
                 "OutOfMemoryError: Container killed due to memory usage"), "permanent", "out of memory"),
        (stopped("EssentialContainerExited", "Essential container in task exited", 137), "transient", "137"),
        (stopped("EssentialContainerExited", "Essential container in task exited", 143), "transient", "143"),
        (stopped("EssentialContainerExited", "Essential container in task exited", None), "transient", "no exit code"),
        (stopped("SpotInterruption", "Your Spot Task was interrupted.", None), "transient", "Spot"),
        (stopped("SpotInterruption", "Your Spot Task was interrupted.", 143), "transient", "Spot"),
        (stopped("TerminationNotice", "Host EC2 (instance i-0abc) stopped/terminated.", None), "transient",
         "terminated"),
        (stopped("InfrastructureHealth", "Task stopped due to an unhealthy host", None), "transient", "unhealthy"),
        (stopped("TaskFailedToStart", "TaskFailedToStart: RESOURCE:GPU", None, started=False), "transient",
         "lack of capacity"),
        (stopped("TaskFailedToStart", "TaskFailedToStart: RESOURCE:MEMORY", None, started=False), "transient",
         "lack of capacity"),
        (stopped("TaskFailedToStart", "TaskFailedToStart: EMPTY CAPACITY PROVIDER", None, started=False),
         "transient", "no instances"),
        (stopped("TaskFailedToStart",
                 "CannotPullContainerError: pull image manifest has been retried 5 time(s): failed to resolve "
                 "ref 123456789012.dkr.ecr.us-east-1.amazonaws.com/autolabel-trainer:missing: not found",
                 None, started=False), "permanent", "cannot be pulled"),
        (stopped("TaskFailedToStart", "Task failed to start", None,
                 "CannotPullContainerError: Error response from daemon: pull access denied", started=False),
         "permanent", "cannot be pulled"),
        (stopped("UserInitiated", "Task stopped by user", 143), "permanent", "stopped by a user"),
        (stopped("TaskFailedToStart",
                 "CannotPullContainerError: pull image manifest has been retried 5 time(s): failed to do request: "
                 "Head https://123456789012.dkr.ecr.us-east-1.amazonaws.com/v2/x/manifests/latest: dial tcp "
                 "10.0.0.1:443: i/o timeout", None, started=False), "transient", "timed out"),
        (stopped("TaskFailedToStart", "Task failed to start", None,
                 "CannotPullContainerError: context deadline exceeded", started=False), "transient", "timed out"),
    ],
)
def test_classify_task(task, outcome, says):
    got, detail = classify_task(task, "trainer")
    assert got == outcome, detail
    assert says in detail


def test_classify_task_reads_the_named_container():
    task = stopped("EssentialContainerExited", "Essential container in task exited", 3)
    sidecar = {"name": "log-router", "lastStatus": "STOPPED", "exitCode": 0}
    task["containers"].insert(0, sidecar)
    assert classify_task(task, "trainer")[0] == "permanent"
    assert classify_task(task, "log-router")[0] == "ok"


def test_task_seconds_is_started_to_stopped():
    assert task_seconds(stopped("EssentialContainerExited", "", 0, seconds=600)) == pytest.approx(600.0)
    assert task_seconds(stopped("TaskFailedToStart", "TaskFailedToStart: RESOURCE:GPU", None, started=False)) == 0.0
    assert task_seconds({}) == 0.0


# ----------------------------------------------------------------------------- run_task failures


@pytest.mark.parametrize(
    "reason, detail, outcome",
    [
        ("RESOURCE:GPU", None, "transient"),
        ("RESOURCE:MEMORY", None, "transient"),
        ("RESOURCE:CPU", None, "transient"),
        ("RESOURCE:PORTS", None, "transient"),
        ("AGENT", None, "transient"),
        ("MISSING", None, "transient"),
        ("ATTRIBUTE", "ecs.capability.gpu", "permanent"),
        ("LOCATION", None, "permanent"),
        ("SOMETHING NEW", "never seen before", "permanent"),
    ],
)
def test_classify_failures(reason, detail, outcome):
    failure = {"arn": CI, "reason": reason}
    if detail:
        failure["detail"] = detail
    got, why = classify_failures([failure])
    assert got == outcome
    assert reason in why


def test_any_permanent_failure_wins_and_empty_is_transient():
    both = [{"arn": CI, "reason": "RESOURCE:GPU"}, {"arn": CI, "reason": "ATTRIBUTE"}]
    assert classify_failures(both)[0] == "permanent"
    # moto reports nothing when nothing fits; AWS would have said why.
    assert classify_failures([])[0] == "transient"


# ----------------------------------------------------------------------------- API errors


@pytest.mark.parametrize(
    "code, message, outcome, says",
    [
        ("ClusterNotFoundException", "Cluster not found.", "permanent", "no such cluster"),
        ("ClientException", "Unable to describe task definition.", "permanent", "no such task definition"),
        ("InvalidParameterException", "Specify either Launch Type or Capacity Provider Strategy, but not both.",
         "permanent", "rejected a parameter"),
        ("AccessDeniedException", "User is not authorized to perform: ecs:RunTask", "permanent", "not allowed"),
        ("ClientException", "TaskDefinition is inactive", "permanent", "rejected the request"),
        ("ThrottlingException", "Rate exceeded", "transient", "throttled"),
        ("TooManyRequestsException", "Too many requests", "transient", "throttled"),
        ("RequestLimitExceeded", "Request limit exceeded.", "transient", "throttled"),
        ("ServerException", "Service Unavailable. Please try again later.", "transient", "internal error"),
    ],
)
def test_classify_error(code, message, outcome, says):
    got, why = classify_error(client_error(code, message))
    assert (got, says in why) == (outcome, True), why


def test_network_errors_and_server_faults_are_transient():
    assert classify_error(EndpointConnectionError(endpoint_url="https://ecs.us-east-1.amazonaws.com"))[0] == "transient"
    assert classify_error(client_error("InternalFailure", "boom", status=500))[0] == "transient"
    assert classify_error(client_error("ValidationException", "bad", status=400))[0] == "permanent"


def test_throttling_codes():
    assert is_throttling(client_error("ThrottlingException", "Rate exceeded"))
    assert is_throttling(client_error("RequestLimitExceeded", "x"))
    assert not is_throttling(client_error("ClientException", "x"))
    assert not is_throttling(ValueError("x"))


def test_every_rule_is_reachable():
    # A rule shadowed by an earlier, more general one would never fire: catch that here.
    for i, rule in enumerate(RULES):
        first = next(r for r in RULES if r.where == rule.where and r.pattern in rule.pattern)
        assert first is rule, f"rule {i} ({rule.pattern!r}) is shadowed by {first.pattern!r}"


def test_redact_hides_access_key_ids():
    assert "AKIA" not in redact("key AKIAABCDEFGHIJKLMNOP leaked")
