"""The grid-search flow: plan, write the cells, launch the packs, summarize; a typed result.

    python -m flows.grid grid-search/demo.yaml             # the command line (flows/grid.py) runs this flow
    prefect deploy --all                                   # the `grid-search` deployment (prefect.yaml)

This file only wires the stages. :func:`flows.plan.prepare.prepare` decides everything once (the
dry run renders the same plan); the flow then holds the grid's lock, writes each cell's
options.json and plan.json, launches the plan's packs (flows/run/launch.py) on the runner its
backend names (flows/run/local.py, flows/ecs/runner.py), and summarizes (flows/summary/). It
returns a :class:`RunResult` in its state, Completed or Failed, from which the command line
takes its exit code without reading any message. A rerun of the same spec trains only what
is not complete.
"""

from __future__ import annotations

import signal
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import FailedRun
from prefect.states import Completed, Failed, State
from prefect.utilities.annotations import quote
from pydantic import BaseModel, Field

from autolabel.errors import SIGNAL_NAMES, no_space
from autolabel.lock import FolderLock, LockBusy
from flows import artifacts
from flows.cost.cap import LOCAL_MAX_PARALLEL, OnCap, verdict
from flows.cost.estimate import Backend
from flows.cost.prices import PRICES
from flows.ecs.settings import EcsSettings
from flows.plan.prepare import RunPlan, prepare
from flows.run.forced import end_forced
from flows.run.halving import HalvingDriver
from flows.run.launch import StopRequest, launch_packs
from flows.run.ledger import Ledger
from flows.run.local import LocalRunner
from flows.run.outcomes import Runner
from flows.run.settings import RunSettings
from flows.spec.cells import CellOutcome, mark_grid_folder, write_cell
from flows.summary.files import write_summary
from flows.summary.report import Summary
from flows.summary.rows import collect_rows


class RunResult(BaseModel):
    """What a run did: the flow's result, Completed or Failed; flows/grid.py maps it to an exit code."""

    grid_dir: str = Field("", description="the grid's folder")
    cells: int = Field(0, description="cells in the grid")
    complete: int = Field(0, description="cells complete after this run")
    incomplete: list[str] = Field(default=[], description="ids of the cells that are not complete")
    skipped_by_cap: int = Field(0, description="cells the cost cap left out (before or during the run)")
    refused: Literal["input", "cap"] | None = Field(None, description="refused before any launch, and why")
    stopped_by: int | None = Field(None, description="the signal that stopped the run (a rerun resumes)")
    io_fault: str | None = Field(None, description="what of this machine stopped the run: 'disk full at PATH'")
    busy: bool = Field(False, description="another run holds the grid's lock")
    message: str = Field("", description="the run's last line, for people")
    summary: Summary | None = Field(None, description="the summary written (None when refused)")


class RunFailed(FailedRun):
    """A Failed flow's data: Prefect resolves a failed state's result into an exception (a worker's
    engine does so for every failed run), so the typed result travels inside one. As Prefect's own
    FailedRun, it ends a worker's run without a traceback in the run's log."""

    def __init__(self, result: RunResult):
        super().__init__(result)
        self.result = result

    def __str__(self) -> str:
        return self.result.message


# ----------------------------------------------------------------------------- tasks


@task(name="prepare", cache_policy=NO_CACHE)
def prepare_run(spec: str, settings: RunSettings) -> RunPlan | RunResult:
    """The run's plan (flows.plan.prepare, as the dry run makes it), or the result refusing it."""
    try:
        plan = prepare(spec, settings)
    except (OSError, ValueError) as e:  # SpecError, CostError, LedgerError: one line (or one per problem)
        return RunResult(refused="input", message=f"{spec}: {e}" if isinstance(e, OSError) else str(e))
    log = get_run_logger()
    for note in plan.notes:
        log.info("note: %s", note)
    log.info("cost pre-flight: %s", verdict(plan.decision))
    return plan


@task(name="write-cells", cache_policy=NO_CACHE)
def write_cells(plan: RunPlan) -> str | None:
    """Materialize each cell's options.json and plan.json (no rewrite when unchanged), in a folder
    marked as the grid's; ``disk full at PATH`` instead when the disk is (nothing launches then)."""
    try:
        mark_grid_folder(plan.grid_dir, plan.spec.name)
        for c in plan.cells:
            write_cell(plan.grid_dir, c)
    except OSError as e:
        if not no_space(e):
            raise
        return no_space(e)
    return None


@task(name="summarize", cache_policy=NO_CACHE)
def summarize(plan: RunPlan, outcomes: dict[str, CellOutcome], ledger: Ledger) -> Summary | str:
    """Write summary.csv/json/md, plots and best/; publish the Prefect artifacts. ``disk full at
    PATH`` when the disk is: the files already written stay whole (each is written atomically)."""
    rows = collect_rows(plan.grid_dir, plan.cells, outcomes, ledger.per_cell_usd)
    try:
        result = write_summary(plan.grid_dir, plan.cells, rows, cap_usd=ledger.cap_usd, spent_usd=ledger.spent_usd,
                               halving=plan.halving.rule if plan.halving else None)
    except OSError as e:
        if not no_space(e):
            raise
        return no_space(e)
    artifacts.publish_artifacts(result, key_prefix=artifacts.artifact_key(plan.grid_dir.name))
    return result


# ----------------------------------------------------------------------------- flow

# The priced instance types: a dropdown on Prefect's run form, not free text.
InstanceType = Literal[tuple(PRICES)]


@flow(name="grid-search", log_prints=True)
def grid_search(
    spec: str,
    backend: Backend = "local",
    max_parallel: int = LOCAL_MAX_PARALLEL,
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
    halving: bool = False,
):
    """Run every cell of a grid spec, within a dollar cap, and summarize the results.

    Args:
        spec: path to the grid spec (YAML or JSON), relative to the working directory.
        backend: "local" runs subprocesses here; "ecs" runs GPU tasks on AWS ECS.
        max_parallel: packs (cells, unless packed) running at once.
        max_cost_usd: hard cap on dollars spent by this grid, earlier runs included.
        instance_type: the GPU instance type that prices the estimate and the ledger
            (one of the priced types, flows/cost/prices.py).
        spot: price at spot rates (the ECS capacity provider must use spot then).
        on_cap: "refuse" to start over the cap, or run the "subset" that fits,
            keeping every level of every factor.
        cells_per_gpu: cells training at once on one GPU (default: from the benchmark); a pack runs such waves.
        out_dir: where cells and summaries go (default: the grid name's folder beside the spec).
        force: retrain cells that are already complete.
        retries: retries of a transiently failed pack (spot loss, OOM kill, ...).
        retry_delay_s: first retry delay; doubles each time, with jitter.
        local_usd_per_hour: what an hour of this machine costs, for the ledger of the local
            backend (default: the instance type's price when cells use local GPUs, else 0).
        ecs: where ECS cells train, the CloudFormation stack's outputs (flows/ecs/settings.py);
            cluster, capacity_provider, task_definition and bucket are required for backend "ecs",
            and a local run ignores them.
        trainer: local backend: the command that trains cells, their folders appended
            (default: this Python's ``-m autolabel.train``).
        halving: successive halving with the default rule (eta 3, cuts at the end of round 1
            and of the first repeat, 7% audit cells) for a spec without a halving key.
    """
    settings = RunSettings(
        backend=backend, max_parallel=max_parallel, max_cost_usd=max_cost_usd, instance_type=instance_type,
        spot=spot, on_cap=on_cap, cells_per_gpu=cells_per_gpu, out_dir=out_dir, force=force, retries=retries,
        retry_delay_s=retry_delay_s, local_usd_per_hour=local_usd_per_hour, trainer=trainer, halving=halving,
        ecs=ecs.model_dump() if isinstance(ecs, EcsSettings) else ecs,
    )
    plan = prepare_run(spec, settings)
    if isinstance(plan, RunResult):
        return end(plan)
    if plan.problems:  # what the dry run refuses: the same lines
        return end(RunResult(grid_dir=str(plan.grid_dir), refused="input", message="; ".join(plan.problems)))
    lock = FolderLock(plan.grid_dir)  # one runner per grid: a second run of it refuses at once
    try:
        lock.acquire()
    except LockBusy as e:
        return end(RunResult(grid_dir=str(plan.grid_dir), busy=True, message=str(e)))
    except OSError as e:
        if not no_space(e):
            raise
        return end(io_fault(plan, no_space(e), summary=None))
    try:
        return end(execute(plan))
    finally:
        lock.release()


def execute(plan: RunPlan) -> RunResult:
    """The flow once it holds the grid's lock: the cap's decision, write, launch, summarize."""
    log = get_run_logger()
    ledger = Ledger.open(plan.grid_dir, plan.settings.max_cost_usd)
    if not plan.decision.runs:
        return RunResult(grid_dir=str(plan.grid_dir), refused="cap", message=plan.decision.message())
    runner = make_runner(plan)
    stop = StopRequest(runner)
    previous = stop.install()
    try:
        if not plan.decision.fits:
            log.info("cost cap: running a subset of %d cells that keeps every factor level", len(plan.todo))
        full = write_cells(quote(plan))
        if full:
            return io_fault(plan, full, summary=None)
        left_out = len(plan.left_out)
        log.info("%d cells, %d already complete, %d to train%s", len(plan.cells),
                 len(plan.cells) - len(plan.pending), len(plan.todo),
                 f", {left_out} left out by the cost cap" if left_out else "")
        outcomes = {c.id: CellOutcome("skipped", "cost cap") for c in plan.left_out}
        driver = start_halving(plan)
        outcomes |= launch_packs(plan.packs, runner, ledger, stop, plan.settings,
                                 artifacts.artifact_key(plan.grid_dir.name) + "-progress",
                                 follow=driver.follow if driver else None,
                                 total=len(plan.packs) + len(plan.halving.later) if driver else None)
        outcomes |= driver.outcomes() if driver else {}
        summary = summarize(quote(plan), outcomes, quote(ledger))  # whatever happened to the cells
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if isinstance(summary, str) or stop.fault:
        return io_fault(plan, stop.fault or summary, summary if isinstance(summary, Summary) else None)
    result = result_of(plan, summary, stop.signum)
    if plan.settings.force and not result.incomplete and result.stopped_by is None:
        end_forced(plan.grid_dir)  # every cell retrained: the forced run is over
    return result


def io_fault(plan: RunPlan, fault: str, summary: Summary | None) -> RunResult:
    """A run this machine stopped (a full disk): what is done is kept, and a rerun resumes."""
    message = (f"{fault}: every running cell checkpointed its epoch in progress and nothing done is lost; free "
               f"space, then rerun the same command to resume" + ("" if summary else " (no summary was written)"))
    incomplete = [r["id"] for r in summary.rows if r["status"] != "complete"] if summary else []
    return RunResult(grid_dir=str(plan.grid_dir), cells=len(plan.cells), incomplete=incomplete, io_fault=fault,
                     message=message, summary=summary)


def start_halving(plan: RunPlan) -> HalvingDriver | None:
    """A halved run's driver (flows/run/halving.py), from the plan's rule, audit set and cell states."""
    h = plan.halving
    if h is None:
        return None
    return HalvingDriver(plan.cells, h.rule, h.audit, h.states, plan.grid_dir, plan.pricing, len(plan.packs),
                         plan.packs)


def make_runner(plan: RunPlan) -> Runner:
    """The backend that trains the plan's packs, billing at the plan's pricing."""
    if plan.pricing.backend == "local":
        return LocalRunner(plan.grid_dir, plan.pricing, gpus=plan.gpus, trainer=plan.settings.trainer)
    from flows.ecs.runner import EcsRunner  # boto3: only for ECS

    return EcsRunner(plan.grid_dir, plan.pricing, plan.ecs)


def result_of(plan: RunPlan, summary: Summary, signum: int | None) -> RunResult:
    """The run's typed result from its summary's rows, and its message."""
    rows = summary.rows
    # A cell the halving rule stopped is done by design: the run may still end Completed.
    incomplete = [r["id"] for r in rows if r["status"] not in ("complete", "cut")]
    cut = sum(r["status"] == "cut" for r in rows)
    result = RunResult(grid_dir=str(plan.grid_dir), cells=len(rows), complete=len(rows) - len(incomplete),
                       incomplete=incomplete, skipped_by_cap=sum(r["status"] == "skipped" for r in rows),
                       stopped_by=signum, summary=summary)
    pre_flight = verdict(plan.decision)
    if signum is not None:
        name = SIGNAL_NAMES[signal.Signals(signum)]
        message = (f"stopped by {name} (exit {128 + signum}): every running cell checkpointed its epoch in "
                   f"progress; rerun the same command to resume; summary of {result.complete} complete cells in "
                   f"{plan.grid_dir}")
    elif incomplete:
        message = (f"{len(incomplete)} of {len(rows)} cells did not complete; see {plan.grid_dir}/summary.md "
                   f"(pre-flight: {pre_flight})")
    elif cut:
        message = (f"{len(rows) - cut} cells complete and {cut} stopped by halving (halving.json says why); summary "
                   f"in {plan.grid_dir} (pre-flight: {pre_flight})")
    else:
        message = f"{len(rows)} cells complete; summary in {plan.grid_dir} (pre-flight: {pre_flight})"
    return result.model_copy(update={"message": message})


def end(result: RunResult) -> State:
    """The flow's final state: Completed only when every cell is complete and nothing stopped it."""
    if result.refused or result.busy or result.stopped_by is not None or result.io_fault or result.incomplete:
        return Failed(message=result.message, data=RunFailed(result))
    return Completed(message=result.message, data=result)
