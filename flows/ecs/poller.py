"""The ECS backend's shared poller: one thread per runner watches every task it has in flight.

    python -m pytest -q tests/test_ecs.py -k "poller or provisioning or runtime_limit"

:class:`EcsRunner` (flows/ecs/runner.py) takes a slot, launches a task and hands it to
:meth:`Poller.watch`; the thread ``ecs-poller`` describes the tasks, frees the slot once a
task leaves PROVISIONING/PENDING, stops (StopTask) one that waits for capacity past
``provisioning_timeout_s`` or runs past its runtime limit, and sets ``done`` once it has
STOPPED. The thread ends when no task is left and starts again with the next one. It relies on:

- DescribeTasks takes "a list of up to 100 task IDs or full ARN entries" (Amazon ECS API
  Reference, DescribeTasks), so the tasks go 100 to a call;
- the ECS API "follows an eventual consistency model" (Amazon ECS API Reference, RunTask): a
  task RunTask has just started may be missing from DescribeTasks for a while, so one is given
  up only after MISSING_POLLS polls in a row that did not find it;
- StopTask sends SIGTERM, then SIGKILL after the container's stop timeout (Amazon ECS API
  Reference, StopTask), so a trainer still alive checkpoints to S3 before it goes.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from flows.ecs.rules import classify_error, classify_failures
from flows.run.outcomes import Outcome

WAITING = ("PROVISIONING", "PENDING")
MISSING_POLLS = 10  # describe_tasks is eventually consistent: a new task may be briefly unknown
DESCRIBE_BATCH = 100  # DescribeTasks' limit
POLL_ERRORS = 8  # failed polls in a row before the tasks in flight are given up


@dataclass
class Watch:
    """One task in flight, as the poller sees it; ``done`` is set once it has STOPPED."""

    arn: str
    launched: float  # time.monotonic() at run_task
    done: threading.Event = field(default_factory=threading.Event)
    holds_slot: bool = True  # still counts against the PROVISIONING bound
    task: dict = field(default_factory=dict)  # the latest describe_tasks entry
    timed_out: bool = False  # we stopped it for waiting too long in PROVISIONING
    misses: int = 0  # polls in a row that did not find it
    error: tuple[Outcome, str] | None = None  # the poller gave up on it
    limit_s: float | None = None  # runtime limit from startedAt; the poller stops it after
    over_limit: bool = False  # we stopped it for running past limit_s
    stop_asked: bool = False  # stop_all() asked it to stop (the flow is being stopped)


class Poller:
    """The tasks one runner has in flight, the thread that describes them, and the slots that
    bound how many wait for capacity at once.

    The runner takes one of ``slots`` before each launch and gives it back itself if nothing
    was launched; for a watched task the poller gives it back once the task has left
    PROVISIONING/PENDING, so at most ``max_parallel`` tasks wait for an instance at once.
    """

    def __init__(self, ecs: Any, cluster: str, max_parallel: int,
                 poll_interval_s: float, provisioning_timeout_s: float):
        self.ecs, self.cluster = ecs, cluster
        self.poll_interval_s, self.provisioning_timeout_s = poll_interval_s, provisioning_timeout_s
        self.slots = threading.Semaphore(max_parallel)  # tasks allowed in PROVISIONING/PENDING
        self.watches: dict[str, Watch] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    def watch(self, arn: str, limit_s: float | None = None) -> Watch:
        """Take over a launched task that holds a slot (the thread starts if it is not running)."""
        w = Watch(arn, time.monotonic(), limit_s=limit_s)
        with self._lock:
            self.watches[arn] = w
        self._ensure_thread()
        self._wake.set()
        return w

    def wait_stopped(self, arn: str, stopping: threading.Event) -> bool:
        """Block until ``arn``, an earlier run's task this runner does not watch, has stopped (or is
        gone); False if ``stopping`` is set first. Errors of a describe are retried at the next poll."""
        from botocore.exceptions import BotoCoreError, ClientError

        misses = 0
        while not stopping.is_set():
            try:
                tasks = self.ecs.describe_tasks(cluster=self.cluster, tasks=[arn]).get("tasks", [])
                if tasks and tasks[0].get("lastStatus") == "STOPPED":
                    return True
                misses = 0 if tasks else misses + 1
                if misses >= MISSING_POLLS:
                    return True
            except (BotoCoreError, ClientError):
                pass
            stopping.wait(self.poll_interval_s)
        return False

    def wait(self, w: Watch) -> None:
        """Block until ``w`` is done, restarting the thread should it have died."""
        while not w.done.wait(30):
            self._ensure_thread()

    def stop_all(self, reason: str) -> None:
        """StopTask on every task in flight, from a thread of its own; returns at once."""
        with self._lock:
            watches = [w for w in self.watches.values() if not w.done.is_set()]
        for w in watches:
            w.stop_asked = True
        threading.Thread(target=self._stop_each, args=(watches, reason), name="ecs-stop", daemon=True).start()

    def _stop_each(self, watches: list[Watch], reason: str) -> None:
        # A task already gone refuses the call; the thread still sees how each one ended.
        for w in watches:
            self._stop_task(w, reason)

    def _ensure_thread(self) -> None:
        with self._lock:
            if self.watches and (self._thread is None or not self._thread.is_alive()):
                self._thread = threading.Thread(target=self._poll_forever, name="ecs-poller", daemon=True)
                self._thread.start()

    def _poll_forever(self) -> None:
        """Describe every task in flight, 100 ARNs a call, until none is left.

        The interval grows (x1.5, up to 6x) while nothing changes and on errors (x2, up to 60 s);
        a state change or a new task brings it back to ``poll_interval_s``.
        """
        delay, errors, last = self.poll_interval_s, 0, 0.0
        while True:
            with self._lock:
                watches = list(self.watches.values())
                if not watches:
                    self._thread = None
                    return
            # Never poll more often than poll_interval_s, however often tasks arrive.
            time.sleep(max(0.0, self.poll_interval_s - (time.monotonic() - last)))
            last = time.monotonic()
            try:
                changed = self.poll_once(watches)
                self.stop_overdue(watches)
                self.stop_over_limit(watches)
                errors = 0
                delay = self.poll_interval_s if changed else min(delay * 1.5, self.poll_interval_s * 6)
            except Exception as e:  # noqa: BLE001 - the poller must outlive any one bad call
                errors += 1
                outcome, why = classify_error(e)
                if outcome == "permanent" or errors >= POLL_ERRORS:
                    for w in watches:
                        w.error = (outcome, f"describe_tasks failed {errors} time(s): {why}")
                        self._done(w)
                delay = min(max(delay, self.poll_interval_s) * 2, max(60.0, self.poll_interval_s))
            if self._wake.wait(random.uniform(0.8, 1.0) * delay):
                self._wake.clear()
                delay = self.poll_interval_s

    def poll_once(self, watches: list[Watch]) -> bool:
        """One round of describe_tasks over ``watches``; True if any task changed state."""
        changed = False
        for i in range(0, len(watches), DESCRIBE_BATCH):
            batch = {w.arn: w for w in watches[i : i + DESCRIBE_BATCH]}
            resp = self.ecs.describe_tasks(cluster=self.cluster, tasks=list(batch))
            seen = {t["taskArn"]: t for t in resp.get("tasks", [])}
            for arn, w in batch.items():
                task = seen.get(arn)
                if task is None:
                    w.misses += 1
                    if w.misses >= MISSING_POLLS:
                        w.error = classify_failures([{"arn": arn, "reason": "MISSING"}])
                        self._done(w)
                    continue
                w.misses = 0
                changed |= task.get("lastStatus") != w.task.get("lastStatus")
                w.task = task
                if task.get("lastStatus") not in WAITING:
                    self._release(w)
                if task.get("lastStatus") == "STOPPED":
                    self._done(w)
        return changed

    def stop_overdue(self, watches: list[Watch]) -> None:
        """Stop tasks that waited in PROVISIONING/PENDING longer than provisioning_timeout_s."""
        now = time.monotonic()
        for w in watches:
            overdue = now - w.launched > self.provisioning_timeout_s
            if overdue and w.holds_slot and not w.timed_out and not w.done.is_set():
                w.timed_out = self._stop_task(w, f"autolabel: no capacity within {self.provisioning_timeout_s:.0f} s")

    def stop_over_limit(self, watches: list[Watch]) -> None:
        """StopTask on tasks running past their limit: SIGTERM, so a trainer still alive checkpoints."""
        now = dt.datetime.now(dt.timezone.utc)
        for w in watches:
            started = w.task.get("startedAt")
            if w.limit_s is None or not started or w.over_limit or w.done.is_set():
                continue
            if (now - started).total_seconds() > w.limit_s:
                w.over_limit = self._stop_task(w, f"autolabel: runtime limit {w.limit_s:.0f} s reached")

    def _stop_task(self, w: Watch, reason: str) -> bool:
        """StopTask (SIGTERM, then SIGKILL after stopTimeout); False if ECS did not take it (retried next poll)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.ecs.stop_task(cluster=self.cluster, task=w.arn, reason=reason)
            return True
        except (BotoCoreError, ClientError):
            return False

    def _release(self, w: Watch) -> None:
        with self._lock:
            if not w.holds_slot:
                return
            w.holds_slot = False
        self.slots.release()

    def _done(self, w: Watch) -> None:
        self._release(w)
        with self._lock:
            self.watches.pop(w.arn, None)
        w.done.set()
