"""What the GPU instances behind a grid's ECS tasks cost, in the units AWS bills.

    python -m pytest -q tests/test_ecs.py -k ledger

AWS bills EC2 instance-seconds from launch to termination (Amazon EC2 pricing, per-second
billing for Linux, read 2026-12-01): boot, image pull, the gaps between packs and the idle tail
before managed scaling removes an empty instance (its scale-in alarm needs 15 one-minute data
points, then capacity steps down), and every GPU of a multi-GPU instance whether or not a task
holds it. A task's runtime (startedAt -> stoppedAt), which the per-cell charges use, misses all
of that. :func:`bill_instances` reads each container instance's EC2 launch and termination
times; what cannot be read (the instance still running, or no permission) is the model of
flows/cost/estimate.py (INSTANCE_START_S before the first task, IDLE_TAIL_S after the last), marked
``estimated``. The ledger records the excess over the tasks' own charges (flows/run/ledger.py).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from flows.cost.estimate import IDLE_TAIL_S, INSTANCE_START_S
from flows.cost.prices import CostError, Price, price_of


@dataclass
class InstanceUse:
    """The tasks of one runner on one container instance: when they ran, what they were charged."""

    first_start: dt.datetime
    last_stop: dt.datetime
    tasks_usd: float = 0.0

    def add(self, started: dt.datetime, stopped: dt.datetime, usd: float) -> None:
        self.first_start, self.last_stop = min(self.first_start, started), max(self.last_stop, stopped)
        self.tasks_usd += usd


# EC2's StateTransitionReason for a terminated instance, e.g. "User initiated (2016-05-04 22:20:10 GMT)"
# or "Service initiated (...)" (EC2 API Reference, Instance, read 2026-12-01).
_WHEN = re.compile(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (?:GMT|UTC)\)")


def termination_time(instance: dict) -> dt.datetime | None:
    """When a terminated (or terminating) instance stopped billing, from EC2's own record."""
    if (instance.get("State") or {}).get("Name") not in ("shutting-down", "terminated"):
        return None
    m = _WHEN.search(instance.get("StateTransitionReason") or "")
    return dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.timezone.utc) if m else None


def instance_span(use: InstanceUse, instance: dict | None, run_start: dt.datetime
                  ) -> tuple[dt.datetime, dt.datetime, bool, str]:
    """(from, to, estimated, how) of what the grid caused on one instance.

    From its launch if it launched for this run (after ``run_start``, the runner's first launch),
    else from the run's first task on it (a warm instance another run started); to its
    termination, else the last task's stop + the modelled idle tail.
    """
    if instance is None:
        return (use.first_start - dt.timedelta(seconds=INSTANCE_START_S),
                use.last_stop + dt.timedelta(seconds=IDLE_TAIL_S), True, "modelled start and idle tail")
    launched = instance.get("LaunchTime")
    begin, how = (launched, "launch") if launched and launched >= run_start else (
        min(use.first_start, run_start), "first task (the instance was already up)")
    end = termination_time(instance)
    if end is not None:
        return begin, end, False, f"{how} to termination"
    return begin, use.last_stop + dt.timedelta(seconds=IDLE_TAIL_S), True, f"{how} to modelled idle tail"


def billed_price(instance_type: str, prices: dict[str, Price] | None, fallback: Price) -> Price:
    """The price an instance of ``instance_type`` bills at (its ``spot_high`` for a spot run, whole).

    ``prices`` is the run's table (flows.ecs.capacity.price_stack read every type the group may
    launch for the stack's region and zones; None: the dated table); a type it lacks is billed as
    ``fallback``, the run's own instance type, and the entry names the type either way.
    """
    try:
        return price_of(instance_type, prices)
    except CostError:
        return fallback


def read_instances(ecs: Any, ec2: Any, cluster: str, arns: list[str]) -> dict[str, dict]:
    """container instance ARN -> its EC2 description (DescribeContainerInstances, DescribeInstances)."""
    out: dict[str, dict] = {}
    for i in range(0, len(arns), 100):  # DescribeContainerInstances takes 100 at most
        cis = ecs.describe_container_instances(cluster=cluster, containerInstances=arns[i : i + 100])
        ids = {c["ec2InstanceId"]: c["containerInstanceArn"] for c in cis.get("containerInstances", [])}
        if not ids:
            continue
        reply = ec2.describe_instances(InstanceIds=list(ids))
        for r in reply.get("Reservations", []):
            for inst in r.get("Instances", []):
                out[ids[inst["InstanceId"]]] = inst
    return out


def bill_instances(uses: dict[str, InstanceUse], described: dict[str, dict] | None, run_start: dt.datetime,
                   spot: bool, price: Price, prices: dict[str, Price] | None = None) -> list[dict[str, Any]]:
    """One ledger ``instance`` entry's fields per instance (``described`` None: nothing readable)."""
    bills = []
    for arn, use in sorted(uses.items()):
        inst = (described or {}).get(arn)
        begin, end, estimated, how = instance_span(use, inst, run_start)
        seconds = max(0.0, (end - begin).total_seconds())
        kind = (inst or {}).get("InstanceType") or price.instance_type
        billed = billed_price(kind, prices, price)
        rate = billed.spot_high if spot else billed.on_demand
        bills.append({
            "instance_id": (inst or {}).get("InstanceId") or arn.rsplit("/", 1)[-1], "seconds": seconds,
            "billed_usd": seconds / 3600 * rate, "tasks_usd": use.tasks_usd, "instance_type": kind,
            "usd_per_hour": rate, "spot": spot, "prices": f"{billed.source}, {billed.where}, {billed.date}",
            "estimated": estimated, "how": how,
            "from": begin.isoformat(), "to": end.isoformat(), "container_instance": arn,
        })
    return bills
