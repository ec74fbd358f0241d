"""The grid search's command line: ``python -m flows.grid SPEC [options]``.

    python -m flows.grid grid-search/demo.yaml --dry-run                 # validate, count, price
    python -m flows.grid grid-search/benson2025.yaml --dry-run --max-cost 30 --instance-type g6e.xlarge
    python -m flows.grid grid-search/benson2025.yaml --dry-run --json    # the same, plus every cell
    python -m flows.grid grid-search/demo.yaml                           # run it (local backend)
    python -m flows.grid grid-search/benson2025.yaml --backend ecs --max-cost 50 --on-cap subset

The dry run writes nothing and launches nothing. Exit codes: 0 valid (and within
--max-cost, or --on-cap subset finds a subset that is), 2 invalid spec or arguments,
3 over the cap. It imports neither Prefect nor torch: a real run imports flows.grid
only after the spec has validated.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows import cost
from flows.cells import Cell, cell_record, complete_ids, expand, grid_dir
from flows.spec import GridSpec, SpecError, load_spec

EXIT_OK, EXIT_INVALID, EXIT_OVER_CAP = 0, 2, 3
LOCAL_MAX_PARALLEL = 2  # a laptop's default; the cloud's is cost.DEFAULT_MAX_PARALLEL GPUs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m flows.grid",
        description="Run (or with --dry-run, validate and price) a grid search spec.",
    )
    p.add_argument("spec", type=Path, help="grid spec, YAML or JSON (e.g. grid-search/demo.yaml)")
    p.add_argument("--dry-run", action="store_true", help="validate, count and price; write and launch nothing")
    p.add_argument("--json", action="store_true", help="dry run: print one JSON document, every cell included")
    p.add_argument("--backend", choices=["local", "ecs"], default="local", help="where cells train (default local)")
    p.add_argument("--max-parallel", type=positive_int, default=None,
                   help=f"cells (packs) at once; default {LOCAL_MAX_PARALLEL} local, "
                        f"{cost.DEFAULT_MAX_PARALLEL} on ECS and in the dry run's wall-clock")
    p.add_argument("--max-cost", type=non_negative_float, default=None, metavar="USD",
                   help="dollar cap for the whole grid, earlier runs' spend included")
    p.add_argument("--instance-type", default="g5.xlarge", help=f"prices the run; one of {', '.join(cost.PRICES)}")
    p.add_argument("--spot", action="store_true", help="price at spot rates (middle of the zones' range)")
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
                   help="dry run: fetch on-demand and spot prices from AWS "
                        "(needs credentials; falls back to the table)")
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


def main(argv: list[str] | None = None) -> int:
    """Parse, validate, then dry-run here or hand the run to flows.grid.run_grid."""
    args = parse_args(argv)
    try:
        if args.dry_run:
            report = dry_run(
                args.spec, out_dir=args.out, instance_type=args.instance_type, spot=args.spot,
                max_parallel=args.max_parallel or cost.DEFAULT_MAX_PARALLEL, max_cost_usd=args.max_cost,
                on_cap=args.on_cap, cells_per_gpu=args.cells_per_gpu, force=args.force,
                refresh_prices=args.refresh_prices,
            )
        else:
            load_spec(args.spec)  # fail fast, before paying for Prefect's import
            cost.price_of(args.instance_type)
            ecs = ecs_settings(args)
    except SpecError as e:
        print(e, file=sys.stderr)
        return EXIT_INVALID
    except (OSError, cost.CostError) as e:
        print(f"{args.spec}: {describe(e)}", file=sys.stderr)
        return EXIT_INVALID
    except ValueError as e:  # ECS settings: one "ecs.field: problem" line each
        print(e, file=sys.stderr)
        return EXIT_INVALID
    if args.dry_run:
        print(json.dumps(report.as_json(), indent=2) if args.json else render(report))
        return report.exit_code

    from flows.grid import run_grid  # Prefect and the runners: only for a real run

    return run_grid(
        args.spec,
        out_dir=args.out,
        backend=args.backend,
        max_parallel=args.max_parallel or (cost.DEFAULT_MAX_PARALLEL if args.backend == "ecs" else LOCAL_MAX_PARALLEL),
        max_cost_usd=args.max_cost,
        instance_type=args.instance_type,
        on_cap=args.on_cap,
        cells_per_gpu=args.cells_per_gpu,
        spot=args.spot,
        force=args.force,
        **({"ecs": ecs} if ecs else {}),
    )


def ecs_settings(args: argparse.Namespace) -> dict | None:
    """``--ecs KEY=VALUE`` pairs, validated now (a ValueError names every bad field) for --backend ecs."""
    if args.backend != "ecs":
        if args.ecs:
            raise ValueError("--ecs settings apply only to --backend ecs")
        return None
    from flows.ecs import EcsSettings, parse_ecs_pairs

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
    spent_usd: float
    estimate: cost.Estimate
    max_cost_usd: float | None
    on_cap: str
    fits: bool
    cells_within: int | None = None  # over the cap: cells of the subset that fits (0: none does)
    cap_problem: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.fits or (self.on_cap == "subset" and self.cells_within):
            return EXIT_OK
        return EXIT_OVER_CAP

    def as_json(self) -> dict[str, Any]:
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
            "spent_usd": round(self.spent_usd, 4),
            "estimate": self.estimate.as_dict(),
            "cap": {
                "max_cost_usd": self.max_cost_usd,
                "fits": self.fits,
                "on_cap": self.on_cap,
                "cells_within": self.cells_within,
                "problem": self.cap_problem,
            },
            "notes": self.notes,
            "exit_code": self.exit_code,
            "cells": [cell_record(c) | {"complete": c.id in self.complete} for c in self.cells],
        }


def dry_run(
    spec_path: Path,
    *,
    out_dir: Path | None = None,
    instance_type: str = "g5.xlarge",
    spot: bool = False,
    max_parallel: int = cost.DEFAULT_MAX_PARALLEL,
    max_cost_usd: float | None = None,
    on_cap: str = "refuse",
    cells_per_gpu: int | None = None,
    force: bool = False,
    refresh_prices: bool = False,
) -> DryRun:
    """Validate, expand, count what is done, and price what is left. Reads only.

    1. spec -> cells; 2. complete cells and earlier spend in the grid's folder;
    3. the estimate for the cells still to train; 4. the cap, and the subset that fits it.
    """
    spec = load_spec(spec_path)
    cells = expand(spec)
    out = grid_dir(spec, spec_path, out_dir)
    done = complete_ids(out)
    todo = cells if force else [c for c in cells if c.id not in done]
    spent = spent_usd(out)
    notes = list(spec.notes)
    prices = None
    if refresh_prices:
        prices, price_notes = cost.refresh_prices([instance_type] if instance_type in cost.PRICES else None)
        notes += price_notes
    cost.price_of(instance_type, prices)  # an unknown type is bad input, before any estimate
    per_gpu = cells_per_gpu or cost.default_cells_per_gpu(instance_type)
    est = cost.estimate(todo, instance_type, spot, max_parallel, per_gpu, prices)
    report = DryRun(spec, Path(spec_path), out, cells, done, todo, spent, est, max_cost_usd, on_cap,
                    fits=max_cost_usd is None or spent + est.usd <= max_cost_usd, notes=notes)
    if not report.fits:
        left = max(0.0, max_cost_usd - spent)
        try:
            subset = cost.select_subset(todo, left, instance_type, spot, per_gpu, max_parallel, prices)
            report.cells_within = len(subset)
        except cost.CostError as e:
            report.cells_within, report.cap_problem = 0, str(e)
    return report


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
        + (f", ${r.spent_usd:.2f} spent so far)" if r.spent_usd else ")")
    )
    if not r.to_train:
        lines.append("nothing to train: every cell is complete (a run only rebuilds the summary)")
        return "\n".join(lines + [f"note: {n}" for n in r.notes])
    lines.append(
        f"estimate for {e.cells} cells to train on {e.instance_type} ({e.gpu}, "
        f"${e.usd_per_gpu_hour_on_demand:.3f}/GPU-h on-demand, ${e.usd_per_gpu_hour_spot:.3f} spot, "
        f"prices {e.price_date}):"
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
    chosen = "spot" if e.spot else "on-demand"
    lines.append(f"  cost        ${e.usd_on_demand:,.2f} on-demand, ${e.usd_spot:,.2f} spot  (this run: {chosen})")
    lines.append(f"  wall-clock  {hours_text(e.wall_hours)} at --max-parallel {e.max_parallel}")
    lines.append(cap_text(r))
    lines += [f"note: {n}" for n in r.notes]
    return "\n".join(lines)


def cap_text(r: DryRun) -> str:
    if r.max_cost_usd is None:
        return "cap: none set (--max-cost USD refuses to start a run that would cost more)"
    total = r.spent_usd + r.estimate.usd
    if r.fits:
        return f"cap: fits, ${total:,.2f} of ${r.max_cost_usd:,.2f}"
    line = f"cap: OVER, ${total:,.2f} > ${r.max_cost_usd:,.2f}; "
    if not r.cells_within:
        return line + r.cap_problem
    action = "--on-cap subset runs them" if r.on_cap == "refuse" else "this run (--on-cap subset) trains them"
    return line + f"{r.cells_within} of {len(r.to_train)} cells fit with every level kept ({action})"


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
