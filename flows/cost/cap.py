"""The cost pre-flight: price the cells left to train, check the cap, pick the subset that fits.

    python -m flows.grid grid-search/benson2025.yaml --dry-run $ECS --max-cost 20 --on-cap subset  # ($ECS: flows/grid.py)

One decision for the dry run and the flow alike: both build a :class:`~flows.cost.estimate.Pricing`
from their flags with :func:`make_pricing` and call :func:`plan_run`, so the dry run prices
exactly the run that the same flags start. Pure: no Prefect, no torch, no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from flows.cost import estimate as cost
from flows.cost.estimate import Backend, Estimate, Pack, Pricing, price_packs
from flows.cost.prices import CostError, Price, price_of
from flows.cost.throughput import default_cells_per_gpu

if TYPE_CHECKING:
    from flows.spec.cells import Cell

OnCap = Literal["refuse", "subset"]
LOCAL_MAX_PARALLEL = 2  # a laptop's default: two cells share its cores
ECS_MAX_PARALLEL = 8  # GPUs at once on ECS


def default_max_parallel(backend: Backend) -> int:
    return ECS_MAX_PARALLEL if backend == "ecs" else LOCAL_MAX_PARALLEL


def make_pricing(
    backend: Backend,
    instance_type: str,
    *,
    spot: bool = False,
    max_parallel: int | None = None,
    cells_per_gpu: int | None = None,
    local_gpus: bool = False,
    local_usd_per_hour: float | None = None,
    prices: dict[str, Price] | None = None,
) -> Pricing:
    """How a run with these flags is priced, as its ledger will charge it (CostError: unknown type).

    ECS pays the instance type's per-GPU rate (spot or on-demand) and, per parallel lane, an
    instance's start and idle tail. The local backend pays no start or idle (the machine is
    already running): its GPUs at the instance type's rate, a CPU-only machine 0 $/h, unless
    ``local_usd_per_hour`` says what an hour of this machine costs. Packs hold waves of cells to
    amortise their start (flows.cost.estimate.fill_packs).
    """
    price = price_of(instance_type, prices)
    if backend == "ecs":
        rate = price.per_gpu(spot)
    elif local_usd_per_hour is not None:
        rate = local_usd_per_hour
    else:
        rate = price.per_gpu(spot) if local_gpus else 0.0
    return Pricing(
        backend=backend,
        instance_type=instance_type,
        spot=spot,
        cells_per_gpu=cells_per_gpu or default_cells_per_gpu(instance_type),
        max_parallel=max_parallel or default_max_parallel(backend),
        instances=backend == "ecs",
        usd_per_gpu_hour=rate,
        prices=prices,
    )


@dataclass(frozen=True)
class Decision:
    """What the pre-flight decided for the cells still to train."""

    cells: int  # cells still to train
    estimate: Estimate  # of all of them
    spent_usd: float  # by earlier runs of this grid
    max_cost_usd: float | None
    on_cap: OnCap
    fits: bool  # spent + estimate within the cap (or no cap, or nothing to train)
    subset: list[Cell] | None = None  # over the cap: the covering subset that fits (None: none does)
    problem: str = ""  # over the cap and no subset fits: why
    packs: list[Pack] = field(default_factory=list)  # what runs, priced: every cell, the subset, or none

    @property
    def cells_within(self) -> int | None:
        """Over the cap: cells of the subset that fits (0 when none does); None when it fits."""
        return None if self.fits else len(self.subset or [])

    @property
    def runs(self) -> bool:
        """Whether the run starts: it fits, or --on-cap subset found a subset that does."""
        return self.fits or (self.on_cap == "subset" and bool(self.subset))

    @property
    def total_usd(self) -> float:
        return self.spent_usd + self.estimate.usd

    def message(self) -> str:
        """Why the run is refused (empty when it runs); names the CLI flag that would change it."""
        if self.runs:
            return ""
        head = (f"cost cap: estimated ${self.estimate.usd:.2f} (+${self.spent_usd:.2f} already spent) "
                f"exceeds the cap ${self.max_cost_usd:.2f}; ")
        if self.subset:
            return head + f"{len(self.subset)} of {self.cells} cells would fit (--on-cap subset runs them)"
        return head + self.problem


def plan_run(
    cells: list[Cell], pricing: Pricing, max_cost_usd: float | None, spent_usd: float = 0.0, on_cap: OnCap = "refuse",
    forced: frozenset[str] = frozenset(),
) -> Decision:
    """Price ``cells``; within ``max_cost_usd`` (earlier spend included) they all run, else the
    covering subset that fits runs under on_cap="subset", and nothing runs under "refuse".
    The decision holds the packs that run, priced once (cost.price_packs; ``forced``: the cells
    retrained under --force)."""
    packs = price_packs(cells, pricing, forced)
    est = cost.estimate(cells, pricing, packs)
    fits = max_cost_usd is None or not cells or spent_usd + est.usd <= max_cost_usd
    if fits:
        return Decision(len(cells), est, spent_usd, max_cost_usd, on_cap, True, packs=packs)
    try:
        subset = select_subset(cells, max(0.0, max_cost_usd - spent_usd), pricing)
    except CostError as e:
        return Decision(len(cells), est, spent_usd, max_cost_usd, on_cap, False, problem=str(e))
    runs = price_packs(subset, pricing, forced) if on_cap == "subset" else []
    return Decision(len(cells), est, spent_usd, max_cost_usd, on_cap, False, subset=subset, packs=runs)


def verdict(d: Decision) -> str:
    """The decision in one line, for the dry run's report and the flow's log alike."""
    if d.max_cost_usd is None:
        return (f"none set, estimated ${d.estimate.usd:,.2f} "
                "(--max-cost USD refuses to start a run that would cost more)")
    if d.fits:
        return f"fits, ${d.total_usd:,.2f} of ${d.max_cost_usd:,.2f}"
    line = f"OVER, ${d.total_usd:,.2f} > ${d.max_cost_usd:,.2f}; "
    if not d.subset:
        return line + d.problem
    action = "--on-cap subset runs them" if d.on_cap == "refuse" else "this run (--on-cap subset) trains them"
    return line + f"{len(d.subset)} of {d.cells} cells fit with every level kept ({action})"


# ----------------------------------------------------------------------------- the subset


def select_subset(cells: list[Cell], cap_usd: float, pricing: Pricing) -> list[Cell]:
    """The cells to run under ``cap_usd``, every level of every factor still represented.

    1. Cover: greedily add the cell that covers the most unseen (factor, level) pairs,
       cheapest first on ties; 2. fill: add the rest in id order (ids are hashes, so this
       is a fixed pseudo-random sample, unchanged when the grid grows) while they fit.
    Returns cells in grid order; raises CostError when even the covering cells do not fit.
    """
    usd = {c.id: cost.cell_usd(c, pricing) for c in cells}
    lanes_usd = cost.billed_lanes(pricing, len(cells)) * cost.lane_overhead_s(pricing.instances) / 3600
    budget = cap_usd - lanes_usd * pricing.usd_per_gpu_hour
    chosen = cover(cells, usd)
    spent = sum(usd[c.id] for c in chosen)
    if spent > budget:
        raise CostError(
            f"even the {len(chosen)} cells that cover every level cost ${spent + cap_usd - budget:.2f} "
            f"with start-up, over the cap ${cap_usd:.2f}; raise the cap or drop levels"
        )
    taken = {c.id for c in chosen}
    fill = []  # in the order added, so the last added goes first if the total runs over
    for c in sorted(cells, key=lambda c: c.id):
        if c.id not in taken and spent + usd[c.id] <= budget:
            fill.append(c.id)
            spent += usd[c.id]
    # Part-filled packs make the whole a little dearer than the sum of cells: trim the fill.
    while True:
        keep = taken | set(fill)
        subset = [c for c in cells if c.id in keep]
        excess = cost.estimate(subset, pricing).usd - cap_usd
        if excess <= 0:
            return subset
        if not fill:
            raise CostError(f"even the {len(chosen)} cells that cover every level exceed the cap ${cap_usd:.2f}")
        while fill and excess > 0:
            excess -= usd[fill.pop()]


def cover(cells: list[Cell], usd: dict[str, float]) -> list[Cell]:
    """Few cells that between them show every level of every hyper factor."""
    missing = {(k, json.dumps(v, sort_keys=True)) for c in cells for k, v in c.hyper.items()}
    pairs = {c.id: {(k, json.dumps(v, sort_keys=True)) for k, v in c.hyper.items()} for c in cells}
    chosen: list[Cell] = []
    while missing:
        best = max(cells, key=lambda c: (len(pairs[c.id] & missing), -usd[c.id]))
        chosen.append(best)
        missing -= pairs[best.id]
    return chosen
