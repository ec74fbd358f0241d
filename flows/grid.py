"""The grid-search flow: spec -> cells -> cost -> runners -> summary.

    python -m flows.grid grid-search/demo.yaml --dry-run   # validate, count, price; launches nothing
    python -m flows.grid grid-search/demo.yaml             # run here, Prefect's ephemeral API, no server
    python -m flows.grid grid-search/benson2025.yaml --backend ecs --max-cost 50 --ecs ...   # see flows/cli.py
    prefect deploy --all                                   # the `grid-search` deployment (prefect.yaml)

This file only wires the stages; each lives in its own module (spec, cells, plan/cost,
runners/ecs, summary). A rerun of the same spec trains only what is not complete.
The command line is flows/cli.py; this module never imports it.
"""

if __name__ == "__main__":
    # `python -m flows.grid` is the CLI's name: hand over to it before paying for Prefect's import
    # (the dry run never needs it). runpy runs flows/cli.py as the script, so the module
    # flows.grid that the CLI imports for a real run does not import the CLI back.
    import runpy

    runpy.run_module("flows.cli", run_name="__main__", alter_sys=True)

import os

# The ephemeral API otherwise tries to phone home and prints an error offline.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import queue  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Literal  # noqa: E402

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.runtime import task_run  # noqa: E402
from prefect.states import Completed, Failed  # noqa: E402
from prefect.utilities.annotations import quote  # noqa: E402

from autolabel.celldir import is_complete  # noqa: E402
from autolabel.errors import SIGNAL_NAMES, STOP_SIGNALS  # noqa: E402
from autolabel.lock import FolderLock, LockBusy  # noqa: E402
from flows import cells as cells_mod  # noqa: E402
from flows import artifacts, checks, cost, plan, rows as rows_mod, spec as spec_mod, summary  # noqa: E402
from flows.cells import Cell  # noqa: E402
from flows.cost import Backend, Pricing  # noqa: E402
from flows.ecs_capacity import price_stack  # noqa: E402
from flows.ecs_settings import EcsSettings  # noqa: E402
from flows.ledger import Ledger, LedgerError  # noqa: E402
from flows.plan import OnCap  # noqa: E402
from flows.prices import PRICES  # noqa: E402
from flows.runners import (  # noqa: E402
    Attempt,
    LocalRunner,
    PermanentError,
    Runner,
    TransientError,
    detect_gpus,
    pack_outcomes,
)


# What a stopped or refused flow's message starts with; flows/cli.py maps it to the exit code.
STOPPED = "stopped by "  # "stopped by SIGTERM (exit 143): ..."
BUSY = "busy: "  # another run holds the grid's lock


class StoppedError(RuntimeError):
    """The flow was asked to stop: the pack checkpointed and stopped; a rerun resumes it (never retried)."""


class StopRequest:
    """The flow's SIGINT/SIGTERM/SIGHUP handler: no new launch, and the runner stops every trainer.

    A second signal of the same kind asks the runner again (a second SIGTERM kills a trainer)."""

    def __init__(self, runner: Runner):
        self.runner = runner
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGTERM)

    def __call__(self, signum: int, _frame: Any = None) -> None:
        first = self.signum is None
        self.signum = self.signum or signum
        if first or signum == self.signum:
            self.runner.stop()

    def message(self) -> str:
        return (f"{STOPPED}{SIGNAL_NAMES[signal.Signals(self.exit_code - 128)]} (exit {self.exit_code}): every "
                f"running cell checkpointed its epoch in progress; rerun the same command to resume")

    def install(self) -> dict[int, Any]:
        """Handle the stop signals while the flow runs (main thread only: Python's rule); the previous handlers."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {s: signal.signal(s, self) for s in STOP_SIGNALS}


# ----------------------------------------------------------------------------- tasks


@task(name="plan-grid", cache_policy=NO_CACHE)
def plan_grid(spec: str, out_dir: str | None) -> tuple[list[Cell], Path]:
    """Validate the spec and expand it into cells (fails fast, launches nothing)."""
    grid = spec_mod.load_spec(Path(spec))
    return cells_mod.expand(grid), cells_mod.grid_dir(grid, Path(spec), out_dir)


@task(name="cost-preflight", cache_policy=NO_CACHE)
def preflight(cells: list[Cell], pricing: Pricing, max_cost_usd: float | None, spent_usd: float,
              on_cap: OnCap) -> plan.Decision:
    """The dry run's own decision (flows.plan.plan_run): the estimate, the cap verdict, the subset."""
    decision = plan.plan_run(cells, pricing, max_cost_usd, spent_usd, on_cap)
    get_run_logger().info("cost pre-flight: %s", plan.verdict(decision))
    return decision


@task(name="write-cells", cache_policy=NO_CACHE)
def write_cells(grid_dir: Path, cells: list[Cell]) -> None:
    """Materialize each cell's options.json and plan.json (no rewrite when unchanged)."""
    for c in cells:
        cells_mod.write_cell(grid_dir, c)


def _is_transient(task, task_run, state) -> bool:
    """Retry only failures that a rerun can fix; the cell then resumes from its checkpoint."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - an unreadable result is no reason to retry
        return False
    return isinstance(exc, TransientError)


@task(name="train-pack", cache_policy=NO_CACHE, retry_condition_fn=_is_transient)
def train_pack(
    grid_dir: Path, pack: list[Cell], runner: Runner, ledger: Ledger, force: bool, stop: StopRequest
) -> dict[str, str]:
    """Train one pack of cells; raise TransientError to be retried, PermanentError or StoppedError to stop."""
    log = get_run_logger()
    if stop.requested:  # a retry after the flow was asked to stop: leave the cells for the rerun
        raise StoppedError("stopped: rerun to resume")
    if task_run.run_count > 1 and ledger.over_cap():
        # A retry is a new launch: it too must fit under what is left of the cap.
        raise PermanentError(f"skipped: cost cap (spent ${ledger.spent_usd:.2f} of ${ledger.cap_usd:.2f})")
    # --force retrains complete cells once; a retry must resume, not start over again.
    # Every line names its cell: packs of several cells run in parallel with others.
    who = pack[0].label if len(pack) == 1 else f"pack of {len(pack)}: {pack[0].label}, ..."
    attempt: Attempt = runner.run(pack, lambda line: log.info("[%s] %s", who, line),
                                  force=force and task_run.run_count <= 1)
    ledger.charge(
        [c.id for c in pack],
        attempt.device_seconds,
        attempt.usd,
        work={c.id: cost.cell_work(c) for c in pack},
        exit_code=attempt.exit_code,
        outcome=attempt.outcome,
        detail=attempt.detail,
        **attempt.extra,
    )
    if stop.requested and attempt.outcome != "ok":
        raise StoppedError("stopped: checkpointed; rerun to resume")
    outcomes = pack_outcomes(grid_dir, pack, f"failed: {attempt.detail}")
    if attempt.outcome == "transient":
        raise TransientError(f"{attempt.detail} (will resume from checkpoint)")
    failed = {k: v for k, v in outcomes.items() if v != "complete"}
    if failed:
        raise PermanentError("; ".join(f"{k}: {v}" for k, v in failed.items()))
    return outcomes


@task(name="summarize", cache_policy=NO_CACHE)
def summarize(grid_dir: Path, cells: list[Cell], outcomes: dict[str, str], ledger: Ledger) -> Any:
    """Write summary.csv/json/md, plots and best/; publish the Prefect artifacts."""
    rows = rows_mod.collect_rows(grid_dir, cells, outcomes, ledger.per_cell_usd)
    result = summary.write_summary(grid_dir, cells, rows, cap_usd=ledger.cap_usd, spent_usd=ledger.spent_usd)
    artifacts.publish_artifacts(result, key_prefix=artifacts.artifact_key(grid_dir.name))
    return result


# ----------------------------------------------------------------------------- flow

# The priced instance types: a dropdown on Prefect's run form, not free text.
InstanceType = Literal[tuple(PRICES)]


@flow(name="grid-search", log_prints=True)
def grid_search(
    spec: str,
    backend: Backend = "local",
    max_parallel: int = plan.LOCAL_MAX_PARALLEL,
    max_cost_usd: float | None = None,
    instance_type: InstanceType = "g5.xlarge",
    spot: bool = False,
    on_cap: OnCap = "refuse",
    cells_per_gpu: int | None = None,
    out_dir: str | None = None,
    force: bool = False,
    retries: int = 3,
    retry_delay_s: float = 30.0,
    local_usd_per_hour: float | None = None,
    ecs: EcsSettings = EcsSettings(),
    trainer: list[str] | None = None,
):
    """Run every cell of a grid spec, within a dollar cap, and summarize the results.

    Args:
        spec: path to the grid spec (YAML or JSON), relative to the working directory.
        backend: "local" runs subprocesses here; "ecs" runs GPU tasks on AWS ECS.
        max_parallel: packs (cells, unless packed) running at once.
        max_cost_usd: hard cap on dollars spent by this grid, earlier runs included.
        instance_type: the GPU instance type that prices the estimate and the ledger
            (one of the priced types, flows/prices.py).
        spot: price at spot rates (the ECS capacity provider must use spot then).
        on_cap: "refuse" to start over the cap, or run the "subset" that fits,
            keeping every level of every factor.
        cells_per_gpu: cells trained together on one GPU (default: from the benchmark).
        out_dir: where cells and summaries go (default: the grid name's folder beside the spec).
        force: retrain cells that are already complete.
        retries: retries of a transiently failed pack (spot loss, OOM kill, ...).
        retry_delay_s: first retry delay; doubles each time, with jitter.
        local_usd_per_hour: what an hour of this machine costs, for the ledger of the local
            backend (default: the instance type's price when cells use local GPUs, else 0).
        ecs: where ECS cells train, the CloudFormation stack's outputs (flows/ecs_settings.py);
            cluster, capacity_provider, task_definition and bucket are required for backend "ecs",
            and a local run ignores them.
        trainer: local backend: the command that trains cells, their folders appended
            (default: this Python's ``-m autolabel.train``).
    """
    cells, grid_dir = plan_grid(spec, out_dir)
    gpus = detect_gpus() if backend == "local" else []
    try:  # bad pricing or backend settings fail here, before anything is written or launched
        settings = ecs_settings(ecs) if backend == "ecs" else None
        # (ECS) The dry run's own reading of the stack: its market checked against spot, prices
        # from its region and zones (flows.ecs_capacity).
        stack = price_stack(settings, instance_type, spot, capped=max_cost_usd is not None) if settings else None
        pricing = plan.make_pricing(backend, instance_type, spot=spot, max_parallel=max_parallel,
                                    cells_per_gpu=cells_per_gpu, local_gpus=bool(gpus),
                                    local_usd_per_hour=local_usd_per_hour, prices=stack.prices if stack else None)
        runner = make_runner(grid_dir, pricing, gpus, settings, trainer)
    except ValueError as e:  # CostError and StackUnreadable included
        return Failed(message=str(e))
    for note in stack.notes if stack else []:
        get_run_logger().info("prices: %s", note)
    problems = checks.check_run(cells, grid_dir)  # what the dry run checks: the same function
    if problems:
        return Failed(message="; ".join(problems))
    lock = FolderLock(grid_dir)  # one runner per grid: a second run of it refuses at once
    try:
        lock.acquire()
    except LockBusy as e:
        return Failed(message=f"{BUSY}{e}")
    stop = StopRequest(runner)
    previous = stop.install()
    try:
        return run_locked(cells, grid_dir, pricing, runner, stop, max_cost_usd, on_cap, force, retries,
                          retry_delay_s)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        lock.release()


def run_locked(cells: list[Cell], grid_dir: Path, pricing: Pricing, runner: Runner, stop: StopRequest,
               max_cost_usd: float | None, on_cap: OnCap, force: bool, retries: int, retry_delay_s: float):
    """The flow once it holds the grid's lock: pre-flight, write, launch, summarize."""
    log = get_run_logger()
    pending = [c for c in cells if force or not is_complete(cells_mod.cell_dir(grid_dir, c))]

    # 1. Cost pre-flight on what is left to train: the dry run's own decision (flows.plan).
    try:
        ledger = Ledger.open(grid_dir, max_cost_usd)
    except LedgerError as e:
        return Failed(message=str(e))
    decision = preflight(quote(pending), pricing, max_cost_usd, ledger.spent_usd, on_cap)
    if not decision.runs:
        return Failed(message=decision.message())
    todo = pending if decision.fits else decision.subset
    if not decision.fits:
        log.info("cost cap: running a subset of %d cells that keeps every factor level", len(todo))

    # 2. Materialize cell directories (complete ones are left as they are).
    write_cells(grid_dir, cells)
    log.info("%d cells, %d already complete, %d to train%s", len(cells), len(cells) - len(pending), len(todo),
             f", {len(pending) - len(todo)} left out by the cost cap" if len(todo) < len(pending) else "")

    # 3. Launch packs, at most max_parallel at once, each only if it fits under the cap.
    chosen = {c.id for c in todo}
    outcomes = {c.id: "skipped: cost cap" for c in pending if c.id not in chosen}
    outcomes |= launch_packs(grid_dir, cost.make_packs(todo, pricing.cells_per_gpu), runner, ledger, pricing,
                            retries, retry_delay_s, force, stop)

    # 4. Summarize, whatever happened to the cells.
    result = summarize(grid_dir, cells, outcomes, ledger)
    failed = [r for r in result.rows if r["status"] != "complete"]
    verdict = plan.verdict(decision)
    if stop.requested:
        return Failed(message=f"{stop.message()}; summary of {len(cells) - len(failed)} complete cells in "
                      f"{grid_dir}", data=result)
    if failed:
        return Failed(message=f"{len(failed)} of {len(cells)} cells did not complete; see {grid_dir}/summary.md "
                      f"(pre-flight: {verdict})", data=result)
    return Completed(message=f"{len(cells)} cells complete; summary in {grid_dir} (pre-flight: {verdict})",
                     data=result)


def ecs_settings(ecs: EcsSettings | dict[str, Any] | None) -> EcsSettings:
    """The flow's ``ecs`` parameter, checked; a ValueError of one line (it becomes the run's state message)."""
    try:
        return EcsSettings.parse(ecs)
    except ValueError as e:
        raise ValueError("; ".join(str(e).splitlines())) from None


def make_runner(grid_dir: Path, pricing: Pricing, gpus: list[str], ecs: EcsSettings | None,
                trainer: list[str] | None) -> Runner:
    """The backend that trains packs, billing what ``pricing`` says an hour costs (``ecs``: checked settings)."""
    if pricing.backend == "local":
        return LocalRunner(grid_dir, pricing.max_parallel, usd_per_hour=pricing.usd_per_gpu_hour, gpus=gpus,
                           trainer=trainer)
    from flows.ecs import EcsRunner

    return EcsRunner(grid_dir, max_parallel=pricing.max_parallel, usd_per_hour=pricing.usd_per_gpu_hour,
                     instance_type=pricing.instance_type, spot=pricing.spot, prices=pricing.prices,
                     settings=ecs)


def launch_packs(grid_dir: Path, packs: list[list[Cell]], runner: Runner, ledger: Ledger, pricing: Pricing,
                 retries: int, retry_delay_s: float, force: bool, stop: StopRequest) -> dict[str, str]:
    """Sliding window over packs: launch while under max_parallel and the cap; collect outcomes."""
    from prefect.tasks import exponential_backoff

    trainer = train_pack.with_options(
        retries=retries, retry_delay_seconds=exponential_backoff(retry_delay_s), retry_jitter_factor=0.5
    )
    done: queue.Queue = queue.Queue()
    outcomes: dict[str, str] = {}
    running = 0
    progress = artifacts.start_progress(len(packs), key=artifacts.artifact_key(grid_dir.name) + "-progress")
    finished = 0

    def collect() -> None:
        nonlocal running, finished
        key, pack, fut = done.get()
        running -= 1
        finished += 1
        ledger.release(key)
        result = fut.result(raise_on_failure=False)
        if isinstance(result, StoppedError):
            outcomes.update(pack_outcomes(grid_dir, pack, str(result)))
        elif isinstance(result, BaseException):
            reason = str(result) if isinstance(result, (TransientError, PermanentError)) else repr(result)
            outcomes.update(pack_outcomes(grid_dir, pack, f"failed: {reason}"))
        else:
            outcomes.update(result)
        artifacts.update_progress(progress, finished, len(packs))

    for i, pack in enumerate(packs):
        while running >= pricing.max_parallel:
            collect()
        if stop.requested:  # no launch after a stop: these cells wait for the rerun
            outcomes.update({c.id: "stopped: not started; rerun to resume" for c in pack})
            finished += 1
            continue
        key = f"pack-{i}"
        est = sum(cost.cell_usd(c, pricing) for c in pack)
        # (ECS) A lane's first pack also reserves its instance's start and idle tail, held until
        # the instances are charged below.
        lane = cost.lane_usd(pricing, i, len(packs))
        if (lane and not ledger.reserve(f"lane-{i}", [c.id for c in pack], lane)) \
                or not ledger.reserve(key, [c.id for c in pack], est):
            ledger.release(f"lane-{i}")
            for c in pack:
                outcomes[c.id] = "skipped: cost cap"
            finished += 1
            continue
        # quote(): Prefect would otherwise walk these objects looking for futures while other
        # threads mutate them (the ledger, the runner's GPU queue).
        fut = trainer.with_options(task_run_name=pack[0].label if len(pack) == 1 else f"pack-{i}-{len(pack)}-cells") \
            .submit(grid_dir, quote(pack), quote(runner), quote(ledger), force, quote(stop))
        running += 1
        fut.add_done_callback(lambda f, k=key, p=pack: done.put((k, p, f)))
    while running:
        collect()
    # (ECS) The instances as AWS bills them (launch to termination), then the lanes' holds end.
    if hasattr(runner, "settle"):
        runner.settle(ledger)
    for i in range(min(len(packs), pricing.max_parallel)):
        ledger.release(f"lane-{i}")
    return outcomes
