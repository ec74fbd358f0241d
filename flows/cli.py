"""The grid search's command line: ``python -m flows.grid SPEC [options]``.

    python -m flows.grid grid-search/demo.yaml --dry-run                 # validate, count, price this run
    python -m flows.grid grid-search/demo.yaml                           # run it (local backend)
    python -m flows.grid grid-search/benson2025.yaml --dry-run --json    # the same, plus every cell
    ECS="--backend ecs --ecs cluster=autolabel --ecs capacity_provider=autolabel-gpu \
         --ecs task_definition=autolabel-train --ecs bucket=my-autolabel-cells"   # the stack's outputs
    python -m flows.grid grid-search/benson2025.yaml $ECS --max-cost 50 --on-cap subset --dry-run   # then without

``python -m flows.cli`` is the same command. ``--dry-run`` prices exactly the run that the
same flags start (flows.plan.plan_run, the flow's own pre-flight), and refuses what that
run would refuse. It writes nothing and launches nothing, and imports neither Prefect nor
torch: a real run imports flows.grid only after the spec, the flags and the prices have
validated.

Exit codes: 0 valid and within --max-cost (or --on-cap subset found a subset that is) and,
for a run, every cell complete; 2 invalid spec, flag or input (a dry-run flag without
--dry-run, an output folder that is not a writable folder, a dataset training would refuse,
a malformed ledger; on ECS a stack that cannot be read, whose market is not the run's, or
whose region cannot be priced under a cap); 3 over the cap (refused, or cells skipped by
it); 4 some cells failed (the others are complete); 75 another run holds this grid; 129,
130, 143 stopped by SIGHUP, Ctrl-C or SIGTERM after every running cell checkpointed (rerun
to resume).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autolabel.errors import EXIT_BUSY, EXIT_INTERRUPTED
from flows import plan
from flows.cells import Cell, cell_record, complete_ids, expand, grid_dir
from flows.checks import check_run
from flows.cost import Estimate, Pricing
from flows.prices import PRICES, TABLE_REGION, CostError, Price, refresh_prices
from flows.spec import GridSpec, SpecError, load_spec

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
                   help=f"packs of cells at once; default {plan.LOCAL_MAX_PARALLEL} local, {plan.ECS_MAX_PARALLEL} on ECS")
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
                   help="cells packed on one GPU (default: from the throughput table)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="output folder (default <spec folder>/<name>/)")
    p.add_argument("--force", action="store_true", help="retrain cells that are already complete")
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
    """Parse and validate; then dry-run here, or run the flow (run_grid).

    A real run first makes the dry run's checks (reads only, a fraction of a second): what the
    dry run refuses, the run refuses with the same line, before Prefect is even imported.
    """
    args = parse_args(argv)
    if not args.dry_run:
        given = [f"--{f.replace('_', '-')}" for f in DRY_RUN_ONLY if getattr(args, f)]
        if given:
            print(f"{given[0]}: applies only to --dry-run; add --dry-run (without it this command trains and pays)",
                  file=sys.stderr)
            return EXIT_INVALID
    try:
        ecs, ecs_problem = None, None
        try:
            ecs = ecs_settings(args)  # the run refuses bad settings: so does its dry run
        except ValueError as e:
            if not (args.dry_run and args.backend == "ecs"):
                raise
            ecs_problem = str(e)  # priced first, then refused: a lab prices a cloud run before its stack
        report = dry_run(args, ecs)
        if ecs_problem:
            report.problems.append(ecs_problem)
    except SpecError as e:
        print(e, file=sys.stderr)
        return EXIT_INVALID
    except (OSError, CostError) as e:
        print(f"{args.spec}: {describe(e)}", file=sys.stderr)
        return EXIT_INVALID
    except ValueError as e:  # ECS settings, a malformed ledger: one line each naming the field or line
        print(e, file=sys.stderr)
        return EXIT_INVALID
    if args.dry_run:
        print(json.dumps(report.as_json(), indent=2) if args.json else render(report))
    for problem in report.problems:
        print(problem, file=sys.stderr)
    if args.dry_run or report.problems:
        return report.exit_code
    return run_grid(args.spec, **run_params(args, ecs))


def pricing_of(args: argparse.Namespace, prices: dict[str, Price] | None = None) -> Pricing:
    """How the flags' run is priced: flows.plan.make_pricing, as the flow calls it for the same flags."""
    from flows.runners import detect_gpus  # light: no torch

    return plan.make_pricing(
        args.backend, args.instance_type, spot=args.spot, max_parallel=args.max_parallel,
        cells_per_gpu=args.cells_per_gpu, local_gpus=args.backend == "local" and bool(detect_gpus()),
        local_usd_per_hour=args.local_usd_per_hour, prices=prices,
    )


def run_params(args: argparse.Namespace, ecs: dict | None) -> dict[str, Any]:
    """The flow's parameters for these flags (grid_search's names)."""
    params: dict[str, Any] = dict(
        out_dir=args.out,
        backend=args.backend,
        max_parallel=args.max_parallel or plan.default_max_parallel(args.backend),
        max_cost_usd=args.max_cost,
        instance_type=args.instance_type,
        on_cap=args.on_cap,
        cells_per_gpu=args.cells_per_gpu,
        spot=args.spot,
        force=args.force,
    )
    if args.local_usd_per_hour is not None:
        params["local_usd_per_hour"] = args.local_usd_per_hour
    if ecs:
        params["ecs"] = ecs
    return params


def ecs_settings(args: argparse.Namespace) -> dict | None:
    """``--ecs KEY=VALUE`` pairs, validated now (a ValueError names every bad field) for --backend ecs."""
    if args.backend != "ecs":
        if args.ecs:
            raise ValueError("--ecs settings apply only to --backend ecs")
        return None
    from flows.ecs_settings import EcsSettings, parse_ecs_pairs

    pairs = parse_ecs_pairs(args.ecs)
    EcsSettings.parse(pairs)
    return pairs


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
    """Run the flow, print the summary table, and map the outcome to an exit code.

    Without PREFECT_API_URL the flow talks to a temporary API server that dies with this
    process (flows.server). SIGINT, SIGTERM and SIGHUP stop the flow cleanly (flows.grid.StopRequest):
    the exit code is then 128 + the signal, and the last line says how to resume.
    """
    from flows import report, summary  # Prefect and the runners: only for a real run
    from flows.grid import BUSY, STOPPED, grid_search
    from flows.server import temporary_api

    try:
        with temporary_api():
            state = grid_search(spec=str(spec), out_dir=str(out_dir) if out_dir else None, return_state=True,
                                **params)
    except KeyboardInterrupt:  # Ctrl-C before the flow's own handler was set (Prefect starting up)
        print(f"{spec}: interrupted before any cell started; nothing to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    try:  # the Summary, also when the flow ended Failed; nothing when it refused to start
        result = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - a state without data has no table to print
        result = None
    if isinstance(result, summary.Summary):
        print(report.console_table(result.rows, grid_dir=result.grid_dir))
    message = state.message or ""
    if state.is_completed():
        print(f"{spec}: {message}")
        return EXIT_OK
    print(f"{spec}: {message}", file=sys.stderr)
    if message.startswith(STOPPED):
        return int(message.split("(exit ", 1)[1].split(")", 1)[0])
    if message.startswith(BUSY):
        return EXIT_BUSY
    if message.startswith("cost cap") or (
        isinstance(result, summary.Summary) and any(r["status"] == "skipped" for r in result.rows)
    ):
        return EXIT_OVER_CAP
    if not isinstance(result, summary.Summary):  # refused before any launch: bad input the dry run missed
        return EXIT_INVALID
    return EXIT_CELLS_FAILED


# ----------------------------------------------------------------------------- dry run


@dataclass
class DryRun:
    """Everything the dry run found out; rendered as text or JSON."""

    spec: GridSpec
    spec_path: Path
    grid_dir: Path
    cells: list[Cell]
    complete: set[str]
    to_train: list[Cell]
    pricing: Pricing
    decision: plan.Decision
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what training would refuse (flows.checks)

    @property
    def estimate(self) -> Estimate:
        return self.decision.estimate

    @property
    def exit_code(self) -> int:
        if self.problems:
            return EXIT_INVALID
        return EXIT_OK if self.decision.runs else EXIT_OVER_CAP

    def as_json(self) -> dict[str, Any]:
        d = self.decision
        return {
            "spec": str(self.spec_path),
            "name": self.spec.name,
            "description": self.spec.description,
            "grid_dir": str(self.grid_dir),
            "factors": self.spec.hyper,
            "static": self.spec.static,
            "plan": self.spec.plan,
            "plan_scale": self.spec.plan_scale,
            "cells_total": len(self.cells),
            "cells_complete": len(self.complete),
            "cells_to_train": len(self.to_train),
            "spent_usd": round(d.spent_usd, 4),
            "estimate": d.estimate.as_dict(),
            "cap": {
                "max_cost_usd": d.max_cost_usd,
                "fits": d.fits,
                "on_cap": d.on_cap,
                "cells_within": d.cells_within,
                "problem": d.problem,
                "verdict": plan.verdict(d),
            },
            "notes": self.notes,
            "problems": self.problems,
            "exit_code": self.exit_code,
            "cells": [cell_record(c) | {"complete": c.id in self.complete} for c in self.cells],
        }


def dry_run(args: argparse.Namespace, ecs: dict | None = None) -> DryRun:
    """Validate, expand, count what is done, and price what is left as these flags' run would. Reads only.

    1. spec -> cells; 2. complete cells and earlier spend in the grid's folder;
    3. (ECS, with its settings) the stack read as the flow reads it: market and prices;
    4. the run's pricing and pre-flight decision (flows.plan), exactly as the flow makes it.
    """
    spec = load_spec(args.spec)
    cells = expand(spec)
    out = grid_dir(spec, args.spec, args.out)
    done = complete_ids(out)
    todo = cells if args.force else [c for c in cells if c.id not in done]
    notes, problems = list(spec.notes), []
    prices, price_notes = run_prices(args, ecs, problems)
    notes += price_notes
    pricing = pricing_of(args, prices)
    decision = plan.plan_run(todo, pricing, args.max_cost, spent_usd(out), args.on_cap)
    if pricing.backend == "local" and pricing.usd_per_gpu_hour == 0:
        notes.append("a local run without GPUs is charged $0 (--local-usd-per-hour says what an hour of this "
                     "machine costs); --backend ecs prices the cloud run")
    problems += check_run(todo, out)  # the flow calls the same check before it launches
    return DryRun(spec, Path(args.spec), out, cells, done, todo, pricing, decision, notes, problems)


def run_prices(args: argparse.Namespace, ecs: dict | None, problems: list[str]) -> tuple[dict[str, Price] | None,
                                                                                           list[str]]:
    """The price table this dry run uses, and notes on where it came from; what the run would refuse
    goes to ``problems``.

    With the ECS settings, the flow's own reading of the stack (flows.ecs_capacity.price_stack);
    without them (or without credentials) the table, refreshed from AWS for the region with
    --refresh-prices.
    """
    if ecs is not None:
        from flows.ecs_capacity import StackUnreadable, price_stack
        from flows.ecs_settings import EcsSettings

        try:
            stack = price_stack(EcsSettings.parse(ecs), args.instance_type, args.spot,
                                capped=args.max_cost is not None)
            return stack.prices, stack.notes
        except StackUnreadable as e:  # the run could not start either; priced from the table meanwhile
            problems.append(str(e))
            table = refresh_prices([args.instance_type], ecs.get("region")) if args.refresh_prices else (None, [])
            return table[0], [f"the stack was not read, so these are the {TABLE_REGION} table's prices; the run "
                              "checks the group's market and prices its region and zones", *table[1]]
        except ValueError as e:  # CostError included: what the run would refuse
            problems.append(str(e))
            return None, []
    if args.refresh_prices:
        from flows.ecs_settings import split_ecs_pairs

        try:
            region = split_ecs_pairs(args.ecs).get("region")
        except ValueError:  # malformed pairs are reported as the run's problem already
            region = None
        return refresh_prices([args.instance_type] if args.instance_type in PRICES else None, region)
    return None, []


def spent_usd(out: Path) -> float:
    """What earlier runs of this grid spent, from its ledger (0 for a new grid)."""
    from flows.ledger import Ledger  # light: json and threading only

    return Ledger.open(out).spent_usd if (out / "ledger.jsonl").exists() else 0.0


# ----------------------------------------------------------------------------- text


def render(r: DryRun) -> str:
    """The dry run as a short report a scientist reads before spending money."""
    s, e = r.spec, r.estimate
    lines = [f"{s.name}: {len(r.cells)} cells from {r.spec_path}" + (" (legacy grid-params.json)" if s.legacy else "")]
    if s.description:
        lines.append(f"  {s.description.strip().splitlines()[0]}")
    lines.append("factors:")
    width = max((len(k) for k in s.hyper), default=0)
    for k, levels in s.hyper.items():
        lines.append(f"  {k:<{width}}  {len(levels)}: {shorten(', '.join(level_text(v) for v in levels), 90)}")
    lines.append(f"plan: {plan_text(s)}")
    lines.append(
        f"output: {r.grid_dir}/  ({len(r.complete & {c.id for c in r.cells})} of {len(r.cells)} cells complete"
        + (f", ${r.decision.spent_usd:.2f} spent so far)" if r.decision.spent_usd else ")")
    )
    if not r.to_train:
        lines.append("nothing to train: every cell is complete (a run only rebuilds the summary)")
        return "\n".join(lines + [f"note: {n}" for n in r.notes])
    lines.append(
        f"estimate for {e.cells} cells to train on {e.instance_type} ({e.gpu}, "
        f"${e.usd_per_gpu_hour_on_demand:.3f}/GPU-h on-demand, ${e.usd_per_gpu_hour_spot:.3f} spot, "
        f"prices {e.price_where} {e.price_date}):"
    )
    lines.append(
        f"  work        {count_text(e.train_images)} training images + {count_text(e.validation_images)} validation, "
        f"{flop_text(e.pflop)}"
    )
    rates = ", ".join(f"{k} {v:,.0f}" for k, v in e.throughput.items())
    lines.append(f"  throughput  images/s per GPU at {e.cells_per_gpu} cell(s) per GPU: {rates}")
    lines += [f"              ({src})" for src in e.sources]
    lines.append(
        f"  GPU-hours   {e.gpu_hours:,.1f}  (cells {e.gpu_hours_cells:,.1f} + instance start/idle "
        f"{e.gpu_hours_overhead:,.1f})"
    )
    lines.append(f"  cost        {cost_text(e)}")
    lines.append(f"  wall-clock  {hours_text(e.wall_hours)} at --max-parallel {e.max_parallel} (--backend {e.backend})")
    lines.append(f"cap: {plan.verdict(r.decision)}")
    lines += [f"note: {n}" for n in r.notes]
    return "\n".join(lines)


def cost_text(e: Estimate) -> str:
    """Dollars at the instance type's rates, and what this run pays (its ledger's rate)."""
    rates = f"${e.usd_on_demand:,.2f} on-demand, ${e.usd_spot:,.2f} spot"
    if e.backend == "ecs":
        return f"{rates}  (this run: {'spot' if e.spot else 'on-demand'})"
    return f"${e.usd:,.2f} this run (local, ${e.usd_per_gpu_hour:.3f}/h); at {e.instance_type} rates {rates}"


def plan_text(s: GridSpec) -> str:
    """``3 rounds of 10/10/10 epochs, until 2; lr x (1, 0.666667, 0.333333); ...``"""
    def shared(key: str, default: Any) -> Any:
        if key in s.hyper:
            return s.hyper[key][0] if len(s.hyper[key]) == 1 else "varies"
        return s.static.get(key, default)

    epochs = "/".join(str(r.get("num_epochs", shared("num_epochs", 10))) for r in s.plan)
    scaled = [
        f"{k} x ({', '.join(f'{f:.6g}' for f in factors)})"
        for k, factors in s.plan_scale.items()
        if any(f != 1 for f in factors) and not all(k in r for r in s.plan)
    ]
    return "; ".join([f"{len(s.plan)} rounds of {epochs} epochs, until {shared('until', 1)}", *scaled])


def level_text(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def count_text(n: float) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n:,.0f}"


def flop_text(pflop: float) -> str:
    return f"{pflop:,.0f} PFLOP" if pflop >= 10 else f"{pflop * 1000:,.1f} TFLOP"


def hours_text(h: float) -> str:
    return f"{h * 60:.0f} min" if h < 1 else f"{h:.1f} h"


if __name__ == "__main__":
    sys.exit(main())
