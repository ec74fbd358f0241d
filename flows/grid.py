"""The grid search's command line: ``python -m flows.grid SPEC [options]``.

    python -m flows.grid grid-search/demo.yaml --dry-run                 # validate, count, price this run
    python -m flows.grid grid-search/demo.yaml                           # run it (local backend)
    python -m flows.grid grid-search/benson2025.yaml --dry-run --json    # the same, plus every cell
    python -m flows.grid grid-search/benson2025.yaml --dry-run --halving # halved, priced beside the full grid
    ECS="--backend ecs --ecs cluster=autolabel --ecs capacity_provider=autolabel-gpu \
         --ecs task_definition=autolabel-train --ecs bucket=my-autolabel-cells"   # the stack's outputs
    python -m flows.grid grid-search/benson2025.yaml $ECS --max-cost 50 --on-cap subset --dry-run   # then without

The flags become one :class:`flows.run.settings.RunSettings`, and
:func:`flows.plan.prepare.prepare` makes the run's plan from them. ``--dry-run`` renders that
plan (flows/plan/render.py): it prices exactly the run that the same flags start and refuses
what that run would refuse, writes nothing, launches nothing, and imports neither Prefect nor
torch. A real run makes the same plan first (reads only, a fraction of a second), so what the
dry run refuses the run refuses with the same lines before Prefect is even imported; then it
starts the flow (flows/flow.py), which prepares its own plan the same way (a run started from
the Prefect UI has no command line), and maps the flow's typed result to an exit code.

Exit codes (:func:`exit_code`): 0 valid and within --max-cost (or --on-cap subset found a
subset that is) and, for a run, every cell complete; 1 the flow itself failed unexpectedly;
2 invalid spec, flag or input (a dry-run flag without --dry-run, an output folder that is not
a writable folder, a dataset training would refuse, a malformed ledger; on ECS a stack that
cannot be read, whose market is not the run's, or whose region cannot be priced under a cap);
3 over the cap (refused, or cells skipped by it); 4 some cells failed (the others are
complete); 69 the Prefect API stopped answering mid-run (every running cell checkpointed;
start it again and rerun); 74 a disk is full (free space and rerun: nothing done is lost); 75
another run holds this grid; 129, 130, 143 stopped by SIGHUP, Ctrl-C or SIGTERM
after every running cell checkpointed (rerun to resume).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autolabel.errors import EXIT_BUSY, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_NO_SPACE
from flows.cost import cap
from flows.cost.prices import PRICES, CostError
from flows.plan.prepare import RunPlan, prepare
from flows.plan.render import as_json, render
from flows.run.settings import RunSettings
from flows.spec.parse import SpecError

if TYPE_CHECKING:
    from flows.flow import RunResult

EXIT_OK = 0
EXIT_INVALID = 2  # invalid spec or flag
EXIT_OVER_CAP = 3  # refused by the cost pre-flight, or cells skipped by the cap
EXIT_CELLS_FAILED = 4  # some cells failed or diverged; the others are complete
# EXIT_BUSY 75: another run holds the grid's folder; a stopped run exits 128 + the signal
# (129 SIGHUP, 130 Ctrl-C = EXIT_INTERRUPTED, 143 SIGTERM): the trainer's own codes.


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m flows.grid",
        description="Run (or with --dry-run, validate and price) a grid search spec.",
    )
    p.add_argument("spec", type=Path, help="grid spec, YAML or JSON (e.g. grid-search/demo.yaml)")
    p.add_argument("--dry-run", action="store_true", help="validate, count and price this run; write and launch nothing")
    p.add_argument("--json", action="store_true", help="dry run: print one JSON document, every cell included")
    p.add_argument("--backend", choices=["local", "ecs"], default="local", help="where cells train (default local)")
    p.add_argument("--max-parallel", type=positive_int, default=None,
                   help=f"packs of cells at once; default {cap.LOCAL_MAX_PARALLEL} local, {cap.ECS_MAX_PARALLEL} on ECS")
    p.add_argument("--max-cost", type=non_negative_float, default=None, metavar="USD",
                   help="dollar cap for the whole grid, earlier runs' spend included")
    p.add_argument("--instance-type", default="g5.xlarge",
                   help=f"GPU the cells are timed on and priced at; one of {', '.join(PRICES)}")
    p.add_argument("--spot", action="store_true", help="price at spot rates (the dearest of the zones')")
    p.add_argument("--local-usd-per-hour", type=non_negative_float, default=None, metavar="USD",
                   help="local backend: what an hour of this machine costs (default: the instance type's "
                        "price with local GPUs, else 0)")
    p.add_argument("--on-cap", choices=["refuse", "subset"], default="refuse",
                   help="over the cap: refuse, or run the subset that fits and keeps every level")
    p.add_argument("--cells-per-gpu", type=positive_int, default=None,
                   help="cells training at once on one GPU; a pack runs such waves until its start-up is at "
                        "most 10%% of it (default: from the throughput table)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="output folder (default <spec folder>/<name>/)")
    p.add_argument("--force", action="store_true", help="retrain cells that are already complete")
    p.add_argument("--halving", action="store_true",
                   help="successive halving with the default rule, for a spec without a halving key (README, "
                        "\"Halving\")")
    p.add_argument("--ecs", action="append", default=[], metavar="KEY=VALUE",
                   help="ECS setting for --backend ecs (repeatable): cluster, capacity_provider, "
                        "task_definition, bucket, prefix, ... (see README)")
    p.add_argument("--refresh-prices", action="store_true",
                   help="dry run: fetch on-demand and spot prices from AWS for the region (needs credentials; "
                        "falls back to the table); with the --ecs settings the stack's own are always read")
    return p.parse_args(argv)


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return int(text)


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of dollars >= 0, got {text!r}")
    return value


DRY_RUN_ONLY = ("json", "refresh_prices")  # flags that mean nothing to a real run


def main(argv: list[str] | None = None) -> int:
    """Parse, plan (flows.plan.prepare); then render the plan (--dry-run) or run the flow (run_grid)."""
    args = parse_args(argv)
    if not args.dry_run:
        given = [f"--{f.replace('_', '-')}" for f in DRY_RUN_ONLY if getattr(args, f)]
        if given:
            print(f"{given[0]}: applies only to --dry-run; add --dry-run (without it this command trains and pays)",
                  file=sys.stderr)
            return EXIT_INVALID
    try:
        plan = prepare(args.spec, run_settings(args))
    except SpecError as e:
        print(e, file=sys.stderr)
        return EXIT_INVALID
    except (OSError, CostError) as e:
        print(f"{args.spec}: {describe(e)}", file=sys.stderr)
        return EXIT_INVALID
    except ValueError as e:  # --ecs misused, a malformed ledger: one line each naming the flag or line
        print(e, file=sys.stderr)
        return EXIT_INVALID
    code = plan_exit_code(plan)
    if args.dry_run:
        emit(json.dumps(as_json(plan, code), indent=2) if args.json else render(plan))
    for problem in plan.problems:
        print(problem, file=sys.stderr)
    if args.dry_run or plan.problems:
        return code
    return run_grid(args.spec, **run_params(args, plan))


def emit(text: str) -> None:
    """Print the report; a reader that stops early (``| head``) is no error: the rest goes nowhere."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's own flush at exit cannot fail too
        os.close(devnull)


def plan_exit_code(plan: RunPlan) -> int:
    """What the plan says before anything runs: 2 a problem, 3 refused by the cap, else 0."""
    if plan.problems:
        return EXIT_INVALID
    return EXIT_OK if plan.decision.runs else EXIT_OVER_CAP


def run_settings(args: argparse.Namespace) -> RunSettings:
    """The flags as the run's settings (a ValueError for ``--ecs`` pairs that are no KEY=VALUE or
    that a local run was given); the ECS settings themselves are checked by the plan."""
    from flows.ecs.settings import split_ecs_pairs  # light: pydantic only

    if args.backend != "ecs" and args.ecs:
        raise ValueError("--ecs settings apply only to --backend ecs")
    return RunSettings(
        backend=args.backend, max_parallel=args.max_parallel, max_cost_usd=args.max_cost,
        instance_type=args.instance_type, spot=args.spot, on_cap=args.on_cap, cells_per_gpu=args.cells_per_gpu,
        out_dir=str(args.out) if args.out else None, force=args.force, local_usd_per_hour=args.local_usd_per_hour,
        ecs=split_ecs_pairs(args.ecs) if args.backend == "ecs" else None, refresh_prices=args.refresh_prices,
        halving=args.halving,
    )


def run_params(args: argparse.Namespace, plan: RunPlan) -> dict[str, Any]:
    """The flow's parameters for these flags (grid_search's names); ``ecs`` as the plan checked it."""
    params: dict[str, Any] = dict(
        out_dir=args.out,
        backend=args.backend,
        max_parallel=plan.pricing.max_parallel,
        max_cost_usd=args.max_cost,
        instance_type=args.instance_type,
        on_cap=args.on_cap,
        cells_per_gpu=args.cells_per_gpu,
        spot=args.spot,
        force=args.force,
    )
    if args.local_usd_per_hour is not None:
        params["local_usd_per_hour"] = args.local_usd_per_hour
    if args.halving:
        params["halving"] = True
    if plan.ecs is not None:
        params["ecs"] = plan.ecs.model_dump(exclude_defaults=True)
    return params


def describe(e: Exception) -> str:
    if isinstance(e, FileNotFoundError):
        return "not found; give the path of a grid spec (YAML or JSON)"
    if isinstance(e, IsADirectoryError):
        return "is a folder; give the path of a grid spec file"
    if isinstance(e, OSError):
        return f"cannot read it ({e.strerror or e})"
    return str(e)


# ----------------------------------------------------------------------------- the run


def run_grid(spec: str | Path, *, out_dir: str | Path | None = None, **params: Any) -> int:
    """Run the flow, print the summary table, and map its typed result to an exit code.

    Without PREFECT_API_URL the flow talks to a temporary API server that dies with this
    process (flows.server). SIGINT, SIGTERM and SIGHUP stop the flow cleanly (flows.flow.StopRequest):
    the exit code is then 128 + the signal, and the last line says how to resume.
    """
    from flows.flow import (  # Prefect and the runners: only for a real run
        RunFailed,
        RunResult,
        grid_search,
    )
    from flows.server import api_watch, temporary_api
    from flows.summary.report import console_table

    try:
        with temporary_api(), api_watch():
            state = grid_search(spec=str(spec), out_dir=str(out_dir) if out_dir else None, return_state=True,
                                **params)
    except KeyboardInterrupt:  # Ctrl-C before the flow's own handler was set (Prefect starting up)
        print(f"{spec}: interrupted before any cell started; nothing to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    try:  # the flow's RunResult (inside RunFailed when it ended Failed); another exception when it crashed
        result = state.result(raise_on_failure=False)
    except Exception as e:  # noqa: BLE001 - a state whose result cannot be read is a crash to report
        result = e
    if isinstance(result, RunFailed):
        result = result.result
    if not isinstance(result, RunResult):
        print(f"{spec}: the flow failed unexpectedly: {state.message or result}", file=sys.stderr)
        return EXIT_ERROR
    if result.summary is not None:
        print(console_table(result.summary.rows, grid_dir=result.summary.grid_dir))
    print(f"{spec}: {result.message}", file=sys.stdout if state.is_completed() else sys.stderr)
    return exit_code(result)


def exit_code(result: RunResult) -> int:
    """The exit code of a run's typed result: a stop first (rerun to resume), a full disk, a busy
    grid, a refusal (bad input; the cap), cells the cap left out, failed cells; else 0."""
    if result.stopped_by is not None:
        return 128 + result.stopped_by
    if result.io_fault:
        return EXIT_NO_SPACE
    if result.busy:
        return EXIT_BUSY
    if result.refused == "input":
        return EXIT_INVALID
    if result.refused == "cap" or result.skipped_by_cap:
        return EXIT_OVER_CAP
    if result.incomplete:
        return EXIT_CELLS_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
