"""The dry run's report: a plan as the text a scientist reads before spending money, or as JSON.

    print(render(plan))                        # flows.plan.prepare.RunPlan
    print(json.dumps(as_json(plan, exit_code), indent=2))

Pure: it formats what the plan decided and decides nothing.
"""

from __future__ import annotations

import json
from typing import Any

from flows.cost.cap import verdict
from flows.cost.estimate import Estimate
from flows.plan.prepare import RunPlan
from flows.spec.cells import cell_record
from flows.spec.parse import GridSpec


def as_json(r: RunPlan, exit_code: int) -> dict[str, Any]:
    """The plan as one JSON document, every cell included."""
    d = r.decision
    return {
        "spec": str(r.spec_path),
        "name": r.spec.name,
        "description": r.spec.description,
        "grid_dir": str(r.grid_dir),
        "factors": r.spec.hyper,
        "static": r.spec.static,
        "plan": r.spec.plan,
        "plan_scale": r.spec.plan_scale,
        "cells_total": len(r.cells),
        "cells_complete": len(r.complete),
        "cells_to_train": len(r.pending),
        "spent_usd": round(d.spent_usd, 4),
        "estimate": d.estimate.as_dict(),
        "cap": {
            "max_cost_usd": d.max_cost_usd,
            "fits": d.fits,
            "on_cap": d.on_cap,
            "cells_within": d.cells_within,
            "problem": d.problem,
            "verdict": verdict(d),
        },
        "notes": r.notes,
        "problems": r.problems,
        "exit_code": exit_code,
        "cells": [cell_record(c) | {"complete": c.id in r.complete} for c in r.cells],
    }


def render(r: RunPlan) -> str:
    """The dry run as a short report a scientist reads before spending money."""
    s, e = r.spec, r.decision.estimate
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
    if not r.pending:
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
    lines.append(f"cap: {verdict(r.decision)}")
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
