"""Launching a plan's packs as Prefect tasks: a sliding window under the cap, retries, and a clean stop.

    outcomes = launch_packs(plan.packs, runner, ledger, stop, plan.settings, progress_key)
    outcomes = launch_packs(plan.packs, ..., follow=driver.follow)   # halving: the cuts' packs as they come

At most ``runner.max_parallel`` packs run at once. Each launch first reserves what the plan
priced for it (``Pack.usd``, and on ECS a lane's first pack also ``Pack.lane_usd``: its
instance's start and idle tail) in the ledger, and is skipped when that does not fit under the
cap. A transiently failed pack is retried with exponential backoff and jitter, resuming from its
checkpoints; a retry is a new launch and must fit under the cap too. After the last pack the
runner settles what the run cost beyond its packs (ECS: the instances).

:class:`StopRequest` is the flow's SIGINT/SIGTERM/SIGHUP handler: no launch after it, and the
runner stops every trainer (each checkpoints its epoch in progress).
"""

from __future__ import annotations

import queue
import signal
import threading
from collections import deque
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run
from prefect.tasks import exponential_backoff
from prefect.utilities.annotations import quote

from autolabel.errors import STOP_SIGNALS, no_space
from flows import artifacts
from flows.cost.estimate import Pack, cell_work
from flows.run.forced import note_forced
from flows.run.ledger import Ledger
from flows.run.outcomes import (
    PackError,
    PermanentError,
    Runner,
    StoppedError,
    TransientError,
    cell_outcomes,
)
from flows.run.settings import RunSettings
from flows.spec.cells import CellOutcome

# What a finished pack makes due: given it and its cells' outcomes, the packs to launch next.
Follow = Callable[[Pack, dict[str, CellOutcome]], list[Pack]]


class StopRequest:
    """The flow's SIGINT/SIGTERM/SIGHUP handler: no new launch, and the runner stops every trainer.

    A second signal of the same kind asks the runner again (a second SIGTERM kills a trainer)."""

    def __init__(self, runner: Runner):
        self.runner = runner
        self.signum: int | None = None
        self.fault: str | None = None  # what of this machine stopped the run (a full disk), if not a signal

    @property
    def requested(self) -> bool:
        return self.signum is not None or self.fault is not None

    def stop_for(self, fault: str) -> None:
        """Stop as a signal would, for a fault of this machine (``disk full at PATH``): every running
        trainer checkpoints its epoch in progress, and nothing more launches."""
        if not self.requested:
            self.fault = fault
            self.runner.stop()

    def __call__(self, signum: int, _frame: Any = None) -> None:
        first = self.signum is None
        self.signum = self.signum or signum
        if first or signum == self.signum:
            self.runner.stop()

    def install(self) -> dict[int, Any]:
        """Handle the stop signals while the flow runs (main thread only: Python's rule); the previous handlers."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {s: signal.signal(s, self) for s in STOP_SIGNALS}


def _is_transient(task, task_run, state) -> bool:
    """Retry only failures that a rerun can fix; the cell then resumes from its checkpoint."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - an unreadable result is no reason to retry
        return False
    return isinstance(exc, TransientError)


def each(pack: Pack, status: str, reason: str) -> dict[str, CellOutcome]:
    return {c.id: CellOutcome(status, reason) for c in pack.cells}


@task(name="train-pack", cache_policy=NO_CACHE, retry_condition_fn=_is_transient)
def train_pack(pack: Pack, runner: Runner, ledger: Ledger, stop: StopRequest) -> dict[str, CellOutcome]:
    """Train one pack; raise TransientError to be retried, PermanentError or StoppedError to stop."""
    log = get_run_logger()
    if stop.requested:  # a retry after the flow was asked to stop: leave the cells for the rerun
        raise StoppedError(each(pack, "stopped", "rerun to resume"), "stopped: rerun to resume")
    if task_run.run_count > 1 and ledger.over_cap():
        # A retry is a new launch: it too must fit under what is left of the cap.
        why = f"cost cap (spent ${ledger.spent_usd:.2f} of ${ledger.cap_usd:.2f})"
        raise PermanentError(each(pack, "skipped", why), f"skipped: {why}")
    # --force retrains complete cells once; a retry must resume, not start over again.
    # Every line names its pack: packs run in parallel with others.
    attempt = runner.run(pack, lambda line: log.info("[%s] %s", pack.name, line),
                         force=pack.force and task_run.run_count <= 1)
    with full_disk_stops(stop):  # the charge is not on file then, so nothing more may launch
        ledger.charge(pack.ids, attempt.device_seconds, attempt.usd, work={c.id: cell_work(c) for c in pack.cells},
                      exit_code=attempt.exit_code, outcome=attempt.outcome, detail=attempt.detail, **attempt.extra)
    if stop.requested and attempt.outcome != "ok":
        reason = "checkpointed; rerun to resume"
        stopped = cell_outcomes(runner.grid_dir, pack.cells, CellOutcome("stopped", reason, attempt.exit_code))
        raise StoppedError(stopped, f"stopped: {reason}")
    if attempt.outcome == "transient":
        raise TransientError(attempt.outcomes, f"{attempt.detail} (will resume from checkpoint)")
    failed = {k: o for k, o in attempt.outcomes.items() if o.status not in ("complete", "paused")}
    if failed:
        raise PermanentError(attempt.outcomes, "; ".join(f"{k}: {o.status}: {o.reason}" for k, o in failed.items()))
    return attempt.outcomes


def launch_packs(packs: list[Pack], runner: Runner, ledger: Ledger, stop: StopRequest, settings: RunSettings,
                 progress_key: str, follow: Follow | None = None, total: int | None = None) -> dict[str, CellOutcome]:
    """Sliding window over ``packs``: launch while under the runner's parallelism and the cap; every
    cell's outcome. Then the runner settles the run's costs beyond its packs and the lanes' holds end.

    ``follow(pack, outcomes)``, called as each pack finishes, returns the packs that its end makes due
    (a halving cut's survivors, flows/run/halving.py): they go ahead of the packs still waiting.
    ``total``: the packs the run expects in all (the progress bar's length; default ``len(packs)``).
    """
    trainer = train_pack.with_options(retries=settings.retries,
                                      retry_delay_seconds=exponential_backoff(settings.retry_delay_s),
                                      retry_jitter_factor=0.5)
    todo = deque(packs)
    window = Window(total or len(packs), ledger, artifacts.start_progress(total or len(packs), key=progress_key),
                    (lambda p, o: todo.extendleft(reversed(follow(p, o)))) if follow else None)
    launched: list[Pack] = []
    while todo or window.running:
        if not todo:  # the rest comes from packs in flight (halving): wait for one to end
            window.wait_below(window.running)
            continue
        window.wait_below(runner.max_parallel)
        if not todo:
            continue
        pack = todo.popleft()
        launched.append(pack)
        if stop.requested:  # no launch after a stop: these cells wait for the rerun
            window.skip(each(pack, "stopped", "not started; rerun to resume"))
        elif not reserve(ledger, pack, stop) or not record_forced(pack, runner, stop):
            window.skip(each(pack, "stopped" if stop.requested else "skipped",
                             "not started; rerun to resume" if stop.requested else "cost cap"))
        else:
            # quote(): Prefect would otherwise walk these objects looking for futures while other
            # threads mutate them (the ledger, the runner's GPU queue).
            fut = trainer.with_options(task_run_name=pack.name).submit(
                quote(pack), quote(runner), quote(ledger), quote(stop))
            window.add(pack, fut)
    with full_disk_stops(stop):  # a hold left open ends with this process; what was not charged, the rerun lacks
        runner.settle(ledger)  # (ECS) the instances as AWS bills them, launch to termination
        for pack in launched:
            if pack.lane_usd:
                ledger.release(f"lane-{pack.index}")
    return window.outcomes


def record_forced(pack: Pack, runner: Runner, stop: StopRequest) -> bool:
    """Before a --force pack launches, its cells go into the grid's record (flows.run.forced), so
    that the rerun of a stopped forced run resumes them rather than retraining them again."""
    if not pack.force:
        return True
    with full_disk_stops(stop):
        note_forced(runner.grid_dir, pack.ids)
        return True
    return False


@contextmanager
def full_disk_stops(stop: StopRequest) -> Iterator[None]:
    """A full disk inside stops the run (``stop.stop_for``: every trainer checkpoints, nothing more
    launches) and the code after the block goes on; any other error goes on up."""
    try:
        yield
    except OSError as e:
        if not no_space(e):
            raise
        stop.stop_for(no_space(e))


def reserve(ledger: Ledger, pack: Pack, stop: StopRequest) -> bool:
    """Hold what the plan priced for ``pack`` (and its lane's instance), or nothing if it does not fit
    (or the ledger cannot be written: a full disk stops the run)."""
    cells = pack.ids
    with full_disk_stops(stop):
        if pack.lane_usd and not ledger.reserve(f"lane-{pack.index}", cells, pack.lane_usd):
            return False
        if not ledger.reserve(f"pack-{pack.index}", cells, pack.usd):
            ledger.release(f"lane-{pack.index}")
            return False
        return True
    return False


class Window:
    """The packs in flight, their outcomes as they finish (told to ``follow``), and the progress artifact."""

    def __init__(self, total: int, ledger: Ledger, progress: Any,
                 follow: Callable[[Pack, dict[str, CellOutcome]], None] | None = None):
        self.total, self.ledger, self.progress, self.follow = total, ledger, progress, follow
        self.done: queue.Queue = queue.Queue()
        self.running = self.finished = 0
        self.outcomes: dict[str, CellOutcome] = {}

    def add(self, pack: Pack, fut: Any) -> None:
        self.running += 1
        fut.add_done_callback(lambda f, p=pack: self.done.put((p, f)))

    def skip(self, outcomes: dict[str, CellOutcome]) -> None:
        self.outcomes.update(outcomes)
        self.tick()

    def wait_below(self, limit: int) -> None:
        """Collect finished packs until fewer than ``limit`` run."""
        while self.running >= limit and self.running:
            pack, fut = self.done.get()
            self.running -= 1
            try:
                self.ledger.release(f"pack-{pack.index}")
            except OSError as e:  # the hold ends with this process anyway
                if not no_space(e):
                    raise
            result = fut.result(raise_on_failure=False)
            if isinstance(result, PackError):
                result = result.outcomes
            elif isinstance(result, BaseException):  # a bug or a lost API: the cells say what they can
                result = each(pack, "failed", repr(result))
            self.outcomes.update(result)
            if self.follow is not None:
                self.follow(pack, result)
            self.tick()

    def tick(self) -> None:
        self.finished += 1
        artifacts.update_progress(self.progress, self.finished, self.total)
