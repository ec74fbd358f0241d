"""What ECS said, as an outcome: the one table of rules that classifies every ECS answer.

    python -m pytest -q tests/test_ecs_classify.py

Pure readings of the API's payloads (run_task failures, a stopped task, an API error):
transient (retried, the cell resumes from its checkpoint) or permanent (never retried), with
the reason in words. A stopped task that matches no rule is classified by its exit code,
as the local runner classifies it (flows.run.local.classify_exit). The runner is in
flows/ecs/runner.py, its poller in flows/ecs/poller.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from flows.run.outcomes import Outcome, classify_exit

Where = Literal["failure", "error", "stopCode", "stoppedReason", "container", "runner"]


@dataclass(frozen=True)
class Rule:
    """If ``pattern`` occurs in the ``where`` part of what ECS said, the attempt is ``outcome``."""

    where: Where  # failure: run_task failures[].reason; error: an API error "Code: message";
    # stopCode / stoppedReason: the stopped task's; container: its containers[].reason;
    # runner: what this runner decided itself (e.g. a PROVISIONING timeout)
    pattern: str
    outcome: Outcome
    why: str


# The one table. First match wins, so the specific rules come before the general ones.
# A stopped task that matches no rule is classified by its exit code (flows.run.local.classify_exit).
RULES: tuple[Rule, ...] = (
    # A pull that timed out on the network passes; the instance's route to ECR/S3 was slow.
    *(Rule(where, pattern, "transient", "the image pull timed out on the network: retried")
      for where in ("stoppedReason", "container")
      for pattern in ("i/o timeout", "context deadline exceeded", "TLS handshake timeout", "connection reset by peer")),
    # Permanent before anything else: an image that cannot be pulled also "fails to start".
    Rule("stoppedReason", "CannotPullContainerError", "permanent",
         "the image cannot be pulled: check the task definition's image and the execution role"),
    Rule("container", "CannotPullContainerError", "permanent",
         "the image cannot be pulled: check the task definition's image and the execution role"),
    # Placement: no room yet. With managed scaling the group adds instances, so a retry fits.
    Rule("failure", "RESOURCE:GPU", "transient", "no free GPU in the cluster yet"),
    Rule("failure", "RESOURCE:MEMORY", "transient", "no instance with enough free memory yet"),
    Rule("failure", "RESOURCE:CPU", "transient", "no instance with enough free CPU yet"),
    Rule("failure", "RESOURCE:", "transient", "no instance with room for the task yet"),
    Rule("failure", "AGENT", "transient", "the container agent is reconnecting"),
    Rule("failure", "MISSING", "transient", "ECS lost track of the task"),
    Rule("failure", "ATTRIBUTE", "permanent",
         "no instance has the attributes the task needs: check the launch template (GPU AMI, ECS_ENABLE_GPU_SUPPORT)"),
    Rule("failure", "LOCATION", "permanent", "no instance in the placement constraint's location"),
    # TaskFailedToStart for capacity: the task gave up waiting for an instance.
    Rule("stoppedReason", "RESOURCE:", "transient", "the task failed to start for lack of capacity"),
    Rule("stoppedReason", "EMPTY CAPACITY PROVIDER", "transient", "the capacity provider had no instances yet"),
    Rule("stoppedReason", "Capacity is unavailable", "transient", "no capacity available at this time"),
    Rule("runner", "PROVISIONING timeout", "transient", "no capacity came within provisioning_timeout_s"),
    # Our own StopTask on a pack past its runtime limit (a hung trainer would bill forever);
    # SIGTERM let it checkpoint, so one retry resumes, and the ledger shows what it spent.
    Rule("runner", "runtime limit", "transient",
         "runtime limit: the pack ran past runtime_limit_factor x its expected time + start-up"),
    # The instance went away under the task; the cell resumes from its S3 checkpoint.
    Rule("stopCode", "SpotInterruption", "transient", "the Spot instance was reclaimed"),
    Rule("stopCode", "TerminationNotice", "transient", "the instance was terminated (scale-in or maintenance)"),
    # Our call: ECS stops a task on an unhealthy host; the cell is not at fault, so retry it.
    Rule("stopCode", "InfrastructureHealth", "transient", "ECS stopped the task because its host was unhealthy"),
    # ECS's OutOfMemoryError is the task's memory limit: the same cell at the same limit runs out
    # again, so a retry would only spend GPU time. (A bare exit 137 stays transient.)
    Rule("container", "OutOfMemoryError", "permanent",
         "out of memory at the task's memory limit: raise TaskMemoryMiB, or pack fewer cells per GPU"),
    # Someone ran stop_task (console, CLI): retrying would go against their wish.
    Rule("stopCode", "UserInitiated", "permanent", "the task was stopped by a user"),
    # API errors. Throttling and server faults pass; a wrong configuration never does.
    Rule("error", "Throttling", "transient", "AWS throttled the request"),
    Rule("error", "TooManyRequestsException", "transient", "AWS throttled the request"),
    Rule("error", "RequestLimitExceeded", "transient", "AWS throttled the request"),
    Rule("error", "ServerException", "transient", "ECS had an internal error"),
    Rule("error", "ServiceUnavailable", "transient", "the service is unavailable"),
    Rule("error", "ClusterNotFoundException", "permanent", "no such cluster: check ecs.cluster and the region"),
    Rule("error", "Unable to describe task definition", "permanent",
         "no such task definition: check ecs.task_definition and the region"),
    Rule("error", "InvalidParameterException", "permanent", "ECS rejected a parameter: check the ecs settings"),
    Rule("error", "AccessDenied", "permanent",
         "not allowed: the credentials need ecs:RunTask/DescribeTasks/StopTask, iam:PassRole and the bucket"),
    Rule("error", "ClientException", "permanent", "ECS rejected the request: check the ecs settings"),
)

THROTTLING = ("Throttling", "ThrottlingException", "TooManyRequestsException", "RequestLimitExceeded")


def match_rule(where: Where, text: str) -> Rule | None:
    """The first rule for ``where`` whose pattern occurs in ``text``."""
    return next((r for r in RULES if r.where == where and text and r.pattern in text), None)


def essential_container(task: dict, container: str | None) -> dict:
    containers = task.get("containers") or [{}]
    return next((c for c in containers if c.get("name") == container), containers[0])


def classify_task(task: dict, container: str | None = None) -> tuple[Outcome, str]:
    """Classify a STOPPED task from ``describe_tasks`` (its ``container``, else the first one)."""
    c = essential_container(task, container)
    code = c.get("exitCode")
    if code == 0:
        return "ok", "complete"  # the trainer finished, whatever stopped the instance afterwards
    said = {
        "stopCode": task.get("stopCode") or "",
        "stoppedReason": task.get("stoppedReason") or "",
        "container": " | ".join(x.get("reason") or "" for x in task.get("containers") or []),
    }
    for rule in RULES:
        if rule.where in said and said[rule.where] and rule.pattern in said[rule.where]:
            return rule.outcome, f"{rule.why} ({rule.where} {said[rule.where]!r})"
    outcome, why = classify_exit(code)
    reason = said["stoppedReason"] or said["stopCode"]
    return outcome, f"{why}{f' ({reason})' if reason else ''}"


def classify_failures(failures: list[dict]) -> tuple[Outcome, str]:
    """Classify ``run_task``'s ``failures``; any permanent one makes the attempt permanent."""
    if not failures:
        # moto places by CPU/memory only and reports nothing when nothing fits; AWS would say RESOURCE:*.
        return "transient", "no task was placed and no reason was given"
    found = []
    for f in failures:
        text = f"{f.get('reason', '')} {f.get('detail', '')}".strip()
        rule = match_rule("failure", text)
        if rule is None:
            found.append(("permanent", f"{text}: unrecognised placement failure, not retried"))
        else:
            found.append((rule.outcome, f"{rule.why} ({text})"))
    outcome: Outcome = "permanent" if any(o == "permanent" for o, _ in found) else "transient"
    return outcome, "; ".join(why for o, why in found if o == outcome)


def classify_error(exc: BaseException) -> tuple[Outcome, str]:
    """Classify an exception from an AWS call: by the table for API errors, transient for the network."""
    from botocore.exceptions import (
        ClientError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
    )

    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return "permanent", ("no AWS credentials: name an AwsCredentials block (ecs.aws_credentials_block) "
                             "or configure boto3's default chain")
    if isinstance(exc, NoRegionError):
        return "permanent", "no AWS region: set ecs.region, AWS_DEFAULT_REGION or the block's region_name"
    if not isinstance(exc, ClientError):
        return "transient", f"cannot reach AWS: {type(exc).__name__}: {exc}"
    err = exc.response.get("Error", {})
    text = f"{err.get('Code', '')}: {err.get('Message', '')}"
    rule = match_rule("error", text)
    if rule is not None:
        return rule.outcome, f"{rule.why} ({text})"
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if status >= 500:
        return "transient", f"AWS server error ({text})"
    return "permanent", f"AWS refused the request ({text})"


def is_throttling(exc: BaseException) -> bool:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
    return code in THROTTLING


def task_seconds(task: dict) -> float:
    """Billable runtime of a task, startedAt -> stoppedAt (0 if it never started)."""
    started, stopped = task.get("startedAt"), task.get("stoppedAt")
    if not started or not stopped:
        return 0.0
    return max(0.0, (stopped - started).total_seconds())


# Keys that look like AWS access key ids; a trainer should never print one, but a log tail is
# copied into the Prefect log, so blank them out to be sure.
_KEY_ID = re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b")


def redact(line: str) -> str:
    return _KEY_ID.sub("<redacted>", line)
