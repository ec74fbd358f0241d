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
from flows.plan.halving import HalvingPlan
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
        **({"halving": halving_json(r)} if r.halving else {}),
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
        done = "complete or stopped by halving" if r.halving else "complete"
        lines.append(f"nothing to train: every cell is {done} (a run only rebuilds the summary)")
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
    lines.append(f"  packs       {e.packs:,} {'tasks' if e.backend == 'ecs' else 'processes'} of up to {e.cells_per_pack} "
                 f"cell(s), {e.cells_per_gpu} at a time, each starting in {e.task_start_s:.0f} s")
    lines.append(
        f"  GPU-hours   {e.gpu_hours:,.1f}  (cells {e.gpu_hours_cells:,.1f} + instance start/idle "
        f"{e.gpu_hours_overhead:,.1f})"
    )
    lines.append(f"  cost        {cost_text(e)}")
    lines.append(f"  wall-clock  {hours_text(e.wall_hours)} at --max-parallel {e.max_parallel} (--backend {e.backend})")
    if r.halving:
        lines += halving_lines(r)
    lines.append(f"cap: {verdict(r.decision)}")
    lines += [f"note: {n}" for n in r.notes]
    return "\n".join(lines)


def cut_counts(h: HalvingPlan) -> list[dict[str, Any]]:
    """Per cut, over every stratum: where it falls, cells ranked and kept (the audit cells go on besides),
    and whether any stratum's part of it is still a projection."""
    out = []
    for i, rnd in enumerate(h.rule.cuts, 1):
        cuts = [c for c in h.projected.cuts if c.index == i]
        out.append({"cut": i, "round": rnd, "ranked": sum(c.ranked for c in cuts), "kept": sum(c.kept for c in cuts),
                    "decided_strata": sum(not c.projected for c in cuts), "strata": len(cuts)})
    return out


def halving_json(r: RunPlan) -> dict[str, Any]:
    """The halved run in the --json document; ``estimate`` is its own, ``full_estimate`` the full grid's."""
    h, e = r.halving, r.decision.estimate
    return {
        "rule": h.rule.model_dump(),
        "audit_cells": len(h.audit),
        "cuts": cut_counts(h),
        "stretches": [{"rounds": list(s.rounds), "cells": s.cells, "train_images": s.train_images,
                       "gpu_hours": s.gpu_hours, "after_undecided_cut": s.later} for s in h.stretches],
        "full_estimate": h.full.as_dict(),
        "train_images_share": e.train_images / h.full.train_images if h.full.train_images else None,
        "gpu_hours_cells_share": e.gpu_hours_cells / h.full.gpu_hours_cells if h.full.gpu_hours_cells else None,
    }


def halving_lines(r: RunPlan) -> list[str]:
    """The halved run's cuts and stretches, and its figures beside the full grid's."""
    h, e, f = r.halving, r.decision.estimate, r.halving.full
    total = max(len(c.plan) * c.options.until for c in r.cells)
    where = " and ".join(f"round {c}" for c in h.rule.cuts)
    lines = [f"halving: eta {h.rule.eta}, cuts after {where} of {total} (repeats counted), within each inputs x "
             f"prediction; {len(h.audit)} audit cells train to the end ({h.rule.audit_fraction:.0%} of each "
             f"stratum, at least {h.rule.audit_per_stratum})"]
    for c in cut_counts(h):
        state = "decided in every stratum" if c["decided_strata"] == c["strata"] else (
            f"decided in {c['decided_strata']} of {c['strata']} strata; the counts give the rest")
        lines.append(f"  cut {c['cut']} (round {c['round']}): {c['ranked']:,} cells ranked, {c['kept']:,} go on  ({state})")
    for s in h.stretches:
        to = "the end" if s.rounds[1] is None else f"{s.rounds[1]}"
        lines.append(f"  rounds {s.rounds[0]} to {to}: {s.cells:,} cells, {count_text(s.train_images)} training "
                     f"images, {s.gpu_hours:,.2f} GPU-hours" + ("  (after a cut still to come)" if s.later else ""))
    lines.append(f"  halved      {count_text(e.train_images)} training images ({share(e.train_images, f.train_images)} "
                 f"of the full grid's {count_text(f.train_images)}), {e.gpu_hours_cells:,.1f} cell GPU-hours "
                 f"({share(e.gpu_hours_cells, f.gpu_hours_cells)} of {f.gpu_hours_cells:,.1f}), ${e.usd:,.2f} "
                 f"against ${f.usd:,.2f} this run")
    lines.append("  (the wall-clock above does not count the waits at the cuts; each cut's packs reserve their "
                 "own price under the cap when the cut is decided)")
    return lines


def share(part: float, whole: float) -> str:
    return f"{part / whole:.0%}" if whole else "n/a"


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
