"""The grid-search flow: spec -> cells -> cost -> runners -> summary.

    python -m flows.grid grid-search/demo.yaml --dry-run   # validate, count, price; launches nothing
    python -m flows.grid grid-search/demo.yaml             # run here, Prefect's ephemeral API, no server
    python -m flows.grid grid-search/benson2025.yaml --backend ecs --max-cost 50 ...
    prefect deploy --all                                   # the `grid-search` deployment (prefect.yaml)

This file only wires the stages; each lives in its own module (spec, cells, cost,
runners/ecs, summary). A rerun of the same spec trains only what is not complete.
"""

if __name__ == "__main__":  # the dry run must not pay for importing Prefect (seconds)
    import sys

    from flows.cli import main

    sys.exit(main())

import os

# The ephemeral API otherwise tries to phone home and prints an error offline.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import queue  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Literal  # noqa: E402

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.runtime import task_run  # noqa: E402
from prefect.states import Completed, Failed  # noqa: E402
from prefect.utilities.annotations import quote  # noqa: E402

from autolabel.celldir import is_complete  # noqa: E402
from flows import cells as cells_mod  # noqa: E402
from flows import artifacts, cost, report, rows as rows_mod, spec as spec_mod, summary  # noqa: E402
from flows.cells import Cell  # noqa: E402
from flows.ledger import Ledger  # noqa: E402
from flows.runners import (  # noqa: E402
    Attempt,
    LocalRunner,
    PermanentError,
    Runner,
    TransientError,
    pack_outcomes,
)

Backend = Literal["local", "ecs"]
OnCap = Literal["refuse", "subset"]


# ----------------------------------------------------------------------------- tasks


@task(name="plan-grid", cache_policy=NO_CACHE)
def plan_grid(spec: str, out_dir: str | None) -> tuple[list[Cell], Path]:
    """Validate the spec and expand it into cells (fails fast, launches nothing)."""
    grid = spec_mod.load_spec(Path(spec))
    return cells_mod.expand(grid), cells_mod.grid_dir(grid, Path(spec), out_dir)


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
    grid_dir: Path, pack: list[Cell], runner: Runner, ledger: Ledger, force: bool
) -> dict[str, str]:
    """Train one pack of cells; raise TransientError to be retried, PermanentError to stop."""
    log = get_run_logger()
    if task_run.run_count > 1 and ledger.over_cap():
        # A retry is a new launch: it too must fit under what is left of the cap.
        raise PermanentError(f"skipped: cost cap (spent ${ledger.spent_usd:.2f} of ${ledger.cap_usd:.2f})")
    # --force retrains complete cells once; a retry must resume, not start over again.
    attempt: Attempt = runner.run(pack, log.info, force=force and task_run.run_count <= 1)
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


@flow(name="grid-search", log_prints=True)
def grid_search(
    spec: str,
    backend: Backend = "local",
    max_parallel: int = 2,
    max_cost_usd: float | None = None,
    instance_type: str = "g5.xlarge",
    spot: bool = False,
    on_cap: OnCap = "refuse",
    cells_per_gpu: int | None = None,
    out_dir: str | None = None,
    force: bool = False,
    retries: int = 3,
    retry_delay_s: float = 30.0,
    local_usd_per_hour: float | None = None,
    ecs: dict[str, Any] | None = None,
):
    """Run every cell of a grid spec, within a dollar cap, and summarize the results.

    Args:
        spec: path to the grid spec (YAML or JSON), relative to the working directory.
        backend: "local" runs subprocesses here; "ecs" runs GPU tasks on AWS ECS.
        max_parallel: packs (cells, unless packed) running at once.
        max_cost_usd: hard cap on dollars spent by this grid, earlier runs included.
        instance_type: the GPU instance type that prices the estimate and the ledger.
        spot: price at spot rates (the ECS capacity provider must use spot then).
        on_cap: "refuse" to start over the cap, or run the "subset" that fits,
            keeping every level of every factor.
        cells_per_gpu: cells trained together on one GPU (default: from the benchmark).
        out_dir: where cells and summaries go (default: <spec folder>/<name>/).
        force: retrain cells that are already complete.
        retries: retries of a transiently failed pack (spot loss, OOM kill, ...).
        retry_delay_s: first retry delay; doubles each time, with jitter.
        local_usd_per_hour: what an hour of this machine costs, for the ledger of the local
            backend (default: the instance type's price when cells use local GPUs, else 0).
        ecs: ECS settings (cluster, capacity_provider, task_definition, bucket, ...).
    """
    log = get_run_logger()
    cells, grid_dir = plan_grid(spec, out_dir)
    try:  # bad backend settings fail here, before anything is written or launched
        runner = make_runner(backend, grid_dir, max_parallel, instance_type, spot, local_usd_per_hour, ecs)
    except ValueError as e:
        return Failed(message=str(e))
    per_gpu = cells_per_gpu or cost.default_cells_per_gpu(instance_type)
    todo = pending = [c for c in cells if force or not is_complete(cells_mod.cell_dir(grid_dir, c))]

    # 1. Cost pre-flight on what is left to train: refuse, or keep a covering subset that fits.
    ledger = Ledger.open(grid_dir, max_cost_usd)
    pricing = dict(instance_type=instance_type, spot=spot, cells_per_gpu=per_gpu, max_parallel=max_parallel,
                   instances=backend == "ecs")  # local GPUs are already running: no start-up to pay
    est = cost.estimate(todo, **pricing)
    if max_cost_usd is not None and todo and ledger.spent_usd + est.usd > max_cost_usd:
        left = max_cost_usd - ledger.spent_usd
        if on_cap == "refuse":
            fits = cost.cells_within(todo, left, **pricing)
            return Failed(
                message=f"cost cap: estimated ${est.usd:.2f} (+${ledger.spent_usd:.2f} already spent) exceeds the cap "
                f"${max_cost_usd:.2f}; {fits} of {len(todo)} cells would fit (on_cap='subset' runs them)"
            )
        try:
            todo = cost.select_subset(todo, left, **pricing)
        except cost.CostError as e:
            return Failed(message=f"cost cap: {e}")
        log.info("cost cap: running a subset of %d cells that keeps every factor level", len(todo))

    # 2. Materialize cell directories (complete ones are left as they are).
    write_cells(grid_dir, cells)
    log.info("%d cells, %d already complete, %d to train", len(cells), len(cells) - len(todo), len(todo))

    # 3. Launch packs, at most max_parallel at once, each only if it fits under the cap.
    chosen = {c.id for c in todo}
    outcomes = {c.id: "skipped: cost cap" for c in pending if c.id not in chosen}
    outcomes |= launch_packs(grid_dir, cost.make_packs(todo, per_gpu), runner, ledger, max_parallel,
                            instance_type, spot, per_gpu, retries, retry_delay_s, force)

    # 4. Summarize, whatever happened to the cells.
    result = summarize(grid_dir, cells, outcomes, ledger)
    failed = [r for r in result.rows if r["status"] != "complete"]
    if failed:
        return Failed(message=f"{len(failed)} of {len(cells)} cells did not complete; see {grid_dir}/summary.md",
                      data=result)
    return Completed(message=f"{len(cells)} cells complete; summary in {grid_dir}", data=result)


def make_runner(backend: Backend, grid_dir: Path, max_parallel: int, instance_type: str, spot: bool,
                local_usd_per_hour: float | None, ecs: dict[str, Any] | None) -> Runner:
    """The backend that trains packs: local subprocesses, or ECS tasks on GPU capacity."""
    price = cost.hourly_price(instance_type, spot=spot)
    if backend == "local":
        return LocalRunner(grid_dir, max_parallel, usd_per_hour=price, local_usd_per_hour=local_usd_per_hour)
    from flows.ecs import EcsRunner

    return EcsRunner(grid_dir, max_parallel=max_parallel, usd_per_hour=price, **(ecs or {}))


def launch_packs(grid_dir, packs, runner, ledger, max_parallel, instance_type, spot, per_gpu,
                 retries, retry_delay_s, force) -> dict[str, str]:
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
        if isinstance(result, BaseException):
            reason = str(result) if isinstance(result, (TransientError, PermanentError)) else repr(result)
            outcomes.update(pack_outcomes(grid_dir, pack, f"failed: {reason}"))
        else:
            outcomes.update(result)
        artifacts.update_progress(progress, finished, len(packs))

    for i, pack in enumerate(packs):
        while running >= max_parallel:
            collect()
        key = f"pack-{i}"
        est = sum(cost.cell_usd(c, instance_type, spot=spot, cells_per_gpu=per_gpu) for c in pack)
        if not ledger.reserve(key, [c.id for c in pack], est):
            for c in pack:
                outcomes[c.id] = "skipped: cost cap"
            finished += 1
            continue
        # quote(): Prefect would otherwise walk these objects looking for futures while other
        # threads mutate them (the ledger, the runner's GPU queue).
        fut = trainer.with_options(task_run_name=pack[0].label if len(pack) == 1 else f"pack-{i}-{len(pack)}-cells") \
            .submit(grid_dir, quote(pack), quote(runner), quote(ledger), force)
        running += 1
        fut.add_done_callback(lambda f, k=key, p=pack: done.put((k, p, f)))
    while running:
        collect()
    return outcomes


# ----------------------------------------------------------------------------- CLI bridge

EXIT_OVER_CAP = 3  # refused by the cost pre-flight, or cells skipped by the cap
EXIT_CELLS_FAILED = 4  # some cells failed or diverged; the others are complete


def run_grid(spec: str | Path, *, out_dir: str | Path | None = None, **params: Any) -> int:
    """Run the flow from the CLI, print the summary table, and map the outcome to an exit code."""
    state = grid_search(spec=str(spec), out_dir=str(out_dir) if out_dir else None, return_state=True, **params)
    try:  # the Summary, also when the flow ended Failed; nothing when it refused to start
        result = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - a state without data has no table to print
        result = None
    if isinstance(result, summary.Summary):
        print(report.console_table(result.rows, grid_dir=result.grid_dir))
    if state.is_completed():
        return 0
    print(f"{spec}: {state.message}", file=sys.stderr)
    if "cost cap" in (state.message or "") or (
        isinstance(result, summary.Summary) and any(r["status"] == "skipped" for r in result.rows)
    ):
        return EXIT_OVER_CAP
    return EXIT_CELLS_FAILED
