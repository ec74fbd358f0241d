"""The halved run's plan: what trains now, what each cut will keep, and the price of it all.

    python -m flows.grid grid-search/benson2025.yaml --halving --dry-run     # priced beside the full grid

    halved, decision = plan_halving(cells, rule, grid_dir, pricing, max_cost_usd, spent_usd)

:func:`plan_halving` reads each cell's files once (flows.spec.halving.read_state), replays every cut
they allow, and prices three kinds of packs:

1. **now**: every cell whose current stretch is not trained yet: the cells before the first cut
   (each to the cut: the trainer's ``--until-round``), the cells a decided cut kept (to the next
   cut or the end), and the audit cells (start to end). These are the packs the run launches first.
2. **later**: the cells that the cuts still to come will keep, as many as the counts give
   (``ceil(n / eta)``, or the level minimums' bound where that is more: flows.spec.halving.keep_bound),
   chosen by a fixed hash since which cells survive is unknown before training. For the published
   grid the counts are exact and only the mix of base models and batch sizes is assumed.
3. **full**: the same cells trained whole, without halving: the figure the halved one stands beside.

The run's estimate is now + later; the cap decides on it, and each pack a cut launches reserves
its own price when the cut is decided (flows/run/halving.py). Reads files; no Prefect, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flows.cost.cap import Decision, OnCap
from flows.cost.estimate import (
    Estimate,
    Pack,
    Pricing,
    Span,
    estimate,
    price_stretches,
    work_of,
)
from flows.spec.cells import Cell
from flows.spec.halving import (
    CellState,
    Replay,
    audit_ids,
    due_stretches,
    read_state,
    replay_cuts,
)
from flows.spec.parse import Halving


@dataclass(frozen=True)
class Stretch:
    """The packs of one stretch of rounds, priced: what the dry run lists per cut."""

    rounds: Span
    cells: int
    train_images: int
    gpu_hours: float
    later: bool  # after a cut still to be decided (its cells are projected)


@dataclass(frozen=True)
class HalvingPlan:
    """A halved run, decided once: the rule, the audit set, the cuts the files allow, and the prices."""

    rule: Halving  # cuts spelled out
    audit: frozenset[str]  # ids of the audit cells (flows.spec.halving.audit_ids)
    states: dict[str, CellState]  # each cell's files as the plan read them
    replay: Replay  # the cuts already decided by those files, and each cell's standing
    projected: Replay  # the same, with the cuts still to come projected
    later: list[Pack]  # the packs the projected cuts would launch (priced; the estimate counts them)
    full: Estimate  # the same cells trained whole, without halving
    stretches: list[Stretch]


def stretches_later(cells: list[Cell], replay: Replay, projected: Replay) -> dict[Span, list[Cell]]:
    """The cells the projected cuts keep, by the stretch after their cut (the next cut, or the end)."""
    out: dict[Span, list[Cell]] = {}
    by_id = {c.id: c for c in cells}
    cuts = projected.rule.cuts
    for cut in projected.cuts:
        if not cut.projected:
            continue
        span = (cut.round, cuts[cut.index] if cut.index < len(cuts) else None)
        out.setdefault(span, []).extend(by_id[v.id] for v in cut.verdicts if v.kept)
    return out


def plan_halving(cells: list[Cell], rule: Halving, grid_dir: Path, pricing: Pricing, max_cost_usd: float | None,
                 spent_usd: float = 0.0, on_cap: OnCap = "refuse") -> tuple[HalvingPlan, Decision]:
    """The halved run of ``cells`` (its plan and the cap's decision on it).

    1. the audit set, each cell's state from its files, the cuts they allow (and the rest projected);
    2. the packs that train now and those the cuts would launch, priced;
    3. the cap's decision on both together; over the cap nothing runs (halving already keeps one
       cell per level, so there is no covering subset to fall back to).
    """
    audit = audit_ids(cells, rule)
    states = {c.id: read_state(grid_dir, c, rule) for c in cells}
    replay = replay_cuts(cells, rule, audit, states)
    projected = replay_cuts(cells, rule, audit, states, project=True)
    now = price_stretches(due_stretches(cells, replay, states), pricing, 0)
    later = price_stretches(stretches_later(cells, replay, projected), pricing, len(now))
    in_play = [c for c in cells if states[c.id].status is None and replay.standing[c.id].stopped_at is None]
    est = estimate(in_play, pricing, now + later)
    full = estimate([c for c in cells if states[c.id].status != "complete"], pricing)
    fits = max_cost_usd is None or not in_play or spent_usd + est.usd <= max_cost_usd
    problem = "" if fits else ("halving already keeps one cell of every level, so --on-cap subset has no subset to "
                               "offer; raise the cap")
    decision = Decision(len(in_play), est, spent_usd, max_cost_usd, on_cap, fits, problem=problem,
                        packs=now if fits else [])
    stretches = [stretch(p, False) for p in group_by_span(now)] + [stretch(p, True) for p in group_by_span(later)]
    return HalvingPlan(rule, audit, states, replay, projected, later, full, stretches), decision


def group_by_span(packs: list[Pack]) -> list[list[Pack]]:
    out: dict[Span | None, list[Pack]] = {}
    for p in packs:
        out.setdefault(p.rounds, []).append(p)
    return list(out.values())


def stretch(packs: list[Pack], later: bool) -> Stretch:
    cells = [c for p in packs for c in p.cells]
    return Stretch(packs[0].rounds or (0, None), len(cells),
                   sum(work_of(c, p.rounds).train_images for p in packs for c in p.cells),
                   sum(p.gpu_seconds for p in packs) / 3600, later)
