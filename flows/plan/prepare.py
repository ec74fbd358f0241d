"""One plan for the dry run and the run: ``prepare(spec, settings) -> RunPlan``.

    from flows.plan.prepare import prepare
    from flows.run.settings import RunSettings
    plan = prepare("grid-search/demo.yaml", RunSettings(max_cost_usd=0.5))
    plan.pending, plan.pricing, plan.decision.packs, plan.problems     # what the run would do

Everything both paths need is decided here, once: the cells and the grid's folder, the cells
still to train, the checked ECS settings, the stack's prices, the run's Pricing, the cap's
decision with the packs that run (each priced, with its reservation), and every problem that
would stop training. The dry run renders the plan (flows/plan/render.py); the flow executes it
(flows/flow.py), from the command line and from the Prefect UI alike, and re-derives nothing.

Reads only: the spec, the grid folder's cell metrics and ledger, dataset manifests, and (ECS)
the stack's Auto Scaling group and AWS's price lists. No Prefect, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from autolabel.celldir import scan_cells
from flows.cost.cap import Decision, make_pricing, plan_run
from flows.cost.estimate import Pack, Pricing
from flows.cost.prices import PRICES, TABLE_REGION, Price, refresh_prices
from flows.ecs.settings import EcsSettings
from flows.plan.checks import check_run
from flows.plan.halving import HalvingPlan, plan_halving
from flows.run.forced import read_forced
from flows.run.local import detect_gpus
from flows.run.settings import RunSettings
from flows.spec.cells import Cell, expand, grid_dir
from flows.spec.halving import rule_for
from flows.spec.parse import GridSpec, load_spec


@dataclass(frozen=True)
class RunPlan:
    """What a run with these settings will do and cost, decided once."""

    spec: GridSpec
    spec_path: Path
    settings: RunSettings
    grid_dir: Path
    cells: list[Cell]  # every cell of the grid, in grid order
    complete: frozenset[str]  # ids of the cells complete on disk
    pending: list[Cell]  # the cells to train (all of them with force)
    ecs: EcsSettings | None  # checked (ECS backend); None locally or when they are invalid
    gpus: list[str]  # this machine's GPUs (local backend)
    pricing: Pricing
    decision: Decision  # the cap's verdict, and the packs that run, priced
    notes: list[str] = field(default_factory=list)  # where prices came from, what a spec ignores
    problems: list[str] = field(default_factory=list)  # what the run refuses: one line each
    halving: HalvingPlan | None = None  # a halved run: its rule, audit set, cuts so far and prices

    @property
    def packs(self) -> list[Pack]:
        """The packs that run, in launch order, each with what it reserves under the cap."""
        return self.decision.packs

    @property
    def todo(self) -> list[Cell]:
        """The cells that run: every pending cell, the subset that fits the cap, or none."""
        return [c for p in self.packs for c in p.cells]

    @property
    def left_out(self) -> list[Cell]:
        """Pending cells that do not run, because of the cap (a halved run's later cells wait for their cuts)."""
        if self.halving is not None:
            return []
        chosen = {c.id for c in self.todo}
        return [c for c in self.pending if c.id not in chosen]


def prepare(spec_path: str | Path, settings: RunSettings) -> RunPlan:
    """The plan of a run: reads the spec, the grid's folder and (ECS) the stack; writes nothing.

    1. spec -> cells, the grid's folder, the cells still to train;
    2. (ECS) the settings checked and the stack read: its market, its region's and zones' prices;
    3. the run's pricing and the cap's decision on the pending cells (flows.cost.cap.plan_run), or,
       halved, on what trains now and what the cuts will keep (flows.plan.halving.plan_halving);
    4. what training would refuse (flows.plan.checks).

    Raises SpecError for a bad spec, CostError for an instance type that cannot be priced and
    LedgerError for a malformed ledger; every other problem goes to ``problems``, so the dry run
    still shows the price of a run whose stack does not exist yet.
    """
    spec = load_spec(spec_path)
    cells = expand(spec)
    out = grid_dir(spec, spec_path, settings.out_dir)
    complete, unreadable = scan_cells(out / "cells")
    done = frozenset(complete)
    notes, problems, late = list(spec.notes), [], []
    pending, forced = pending_cells(cells, done, out, settings.force, notes)
    ids = {c.id for c in cells}
    notes += [f"{why}: the run rebuilds it from model.pt and history.csv if they show the cell finished, else "
              "trains the cell again" for cid, why in sorted(unreadable.items()) if cid in ids]
    ecs = check_ecs(settings, late)
    prices = read_prices(settings, ecs, notes, problems)
    gpus = detect_gpus() if settings.backend == "local" else []
    pricing = make_pricing(
        settings.backend, settings.instance_type, spot=settings.spot, max_parallel=settings.max_parallel,
        cells_per_gpu=settings.cells_per_gpu, local_gpus=bool(gpus), local_usd_per_hour=settings.local_usd_per_hour,
        prices=prices,
    )
    rule, late_halving = rule_for(spec, settings.halving)
    halved = None
    if rule is None:
        decision = plan_run(pending, pricing, settings.max_cost_usd, spent_usd(out), settings.on_cap, forced)
    else:  # every cell in play; each cut's decisions come from the cells' own files
        halved, decision = plan_halving(cells, rule, out, pricing, settings.max_cost_usd, spent_usd(out),
                                        settings.on_cap)
        pending = [c for c in cells if c.id in halved.replay.standing and halved.states[c.id].status is None
                   and halved.replay.standing[c.id].stopped_at is None]
        if settings.force:
            late_halving.append("--force: does not combine with halving, whose decisions are read from the cells' "
                                "files; run without --halving (or the spec's halving key) to retrain")
    fused = sum(p.fused for p in decision.packs)
    if fused:
        notes.append(f"{fused} of {len(decision.packs)} packs train fused (one vmapped model: the trainer's "
                     "--fused), where a benchmark measured that very pack faster than its cells side by side")
    if pricing.backend == "local" and pricing.usd_per_gpu_hour == 0:
        notes.append("a local run without GPUs is charged $0 (--local-usd-per-hour says what an hour of this "
                     "machine costs); --backend ecs prices the cloud run")
    problems += check_run(pending, out) + late + late_halving
    return RunPlan(spec, Path(spec_path), settings, out, cells, done, pending, ecs, gpus, pricing, decision,
                   notes, problems, halved)


def pending_cells(cells: list[Cell], done: frozenset[str], out: Path, force: bool,
                  notes: list[str]) -> tuple[list[Cell], frozenset[str]]:
    """(the cells to train, those of them to retrain with --force).

    Without force: the cells not complete, none forced. With force: every cell, all forced; or, when
    a forced run of this grid was stopped (flows.run.forced), its resume: the cells it retrained and
    finished are done, the ones it retrained and stopped resume from their checkpoints, and only
    the others are forced.
    """
    if not force:
        return [c for c in cells if c.id not in done], frozenset()
    record = read_forced(out)
    if record is None:
        return list(cells), frozenset(c.id for c in cells)
    started, retrained = record
    pending = [c for c in cells if not (c.id in retrained and c.id in done)]
    forced = frozenset(c.id for c in pending if c.id not in retrained)
    notes.append(f"resuming the --force run started {started}: {len(cells) - len(pending)} cells it retrained are "
                 f"complete, {len(pending) - len(forced)} it stopped resume from their checkpoints, {len(forced)} "
                 "still to retrain")
    return pending, forced


def check_ecs(settings: RunSettings, problems: list[str]) -> EcsSettings | None:
    """The ECS settings, checked (None for the local backend); their problems, one line each."""
    if settings.backend != "ecs":
        return None
    try:
        return EcsSettings.parse(settings.ecs)
    except ValueError as e:
        problems.extend(str(e).splitlines())
        return None


def read_prices(settings: RunSettings, ecs: EcsSettings | None, notes: list[str],
                problems: list[str]) -> dict[str, Price] | None:
    """The price table this run uses (None: the dated table); notes say where it came from.

    With the ECS settings, the stack's own reading (flows.ecs.capacity.price_stack: its market
    checked against spot, its region's and zones' prices); what it refuses goes to ``problems``
    and the table prices the run meanwhile. Without them, the table, refreshed from AWS for the
    region with ``refresh_prices``.
    """
    if ecs is not None:
        from flows.ecs.capacity import (  # boto3: only for ECS
            StackUnreadable,
            price_stack,
        )

        try:
            stack = price_stack(ecs, settings.instance_type, settings.spot, capped=settings.max_cost_usd is not None)
            notes += stack.notes
            return stack.prices
        except StackUnreadable as e:  # the run could not start either; priced from the table meanwhile
            problems.append(str(e))
            table, why = refresh_prices([settings.instance_type], ecs.region) if settings.refresh_prices \
                else (None, [])
            notes += [f"the stack was not read, so these are the {TABLE_REGION} table's prices; the run "
                      "checks the group's market and prices its region and zones", *why]
            return table
        except ValueError as e:  # CostError included: what the run would refuse
            problems.append(str(e))
            return None
    if settings.refresh_prices:
        region = (settings.ecs or {}).get("region") or None
        table, why = refresh_prices([settings.instance_type] if settings.instance_type in PRICES else None, region)
        notes += why
        return table
    return None


def spent_usd(out: Path) -> float:
    """What earlier runs of this grid spent, from its ledger (0 for a new grid)."""
    from flows.run.ledger import Ledger  # light: json and threading only

    return Ledger.open(out).spent_usd if (out / "ledger.jsonl").exists() else 0.0
