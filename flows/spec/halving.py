"""Successive halving that keeps the grid's answers: the audit set, each cut's decision, and their replay.

    halving: true                                        # in a grid spec (or python -m flows.grid SPEC --halving)
    halving: {eta: 3, cuts: [1, 3], audit_fraction: 0.07, audit_per_stratum: 2}

    audit = audit_ids(cells, rule)                        # fixed before training, by a hash of the ids
    states = {c.id: read_state(grid_dir, c, rule) for c in cells}   # what each cell's files say
    replay = replay_cuts(cells, rule, audit, states)      # every decision the files allow, and each cell's standing

The rule, within each inputs x prediction stratum (flows.spec.cells.STRATA), at each cut (a round
boundary, ``rule.cuts`` rounds trained with repeats counted):

1. **Audit.** A balanced sample of the stratum's cells (``audit_fraction``, at least
   ``audit_per_stratum``), picked before training by a hash of their ids, trains to the end whatever
   it scores: the cells on which the end's statistics stay valid.
2. **Wait.** A cut is decided once every other cell still in the stratum has trained to it (or
   failed or diverged before it). Strata move on independently.
3. **Rank.** By the score at the cut: the validation Dice loss metrics.json would report if the
   plan ended there (autolabel.scores, the trainer's own rule). Ties go to the lower cell id.
4. **Keep.** The best cell of every level of every factor (walking the ranking, each cell that
   shows a level no better cell showed), then the best of the rest up to ``ceil(n / eta)``.

Every decision depends only on the cells' history up to the cut, so a rerun recomputes the same
ones from the cells' own files, and a cell trained further meanwhile (a run without halving)
changes nothing. Pure, except :func:`read_state`, the one reader of a cell's files here.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autolabel.celldir import read_history, read_metrics
from autolabel.options import CellMetrics
from autolabel.scores import Score, rounds_done, score_at
from flows.spec.cells import STRATA, Cell, cell_dir, stratum_key
from flows.spec.parse import GridSpec, Halving, resolve_cuts, shortest_until

# ----------------------------------------------------------------------------- the rule for a run


def rule_for(spec: GridSpec, flag: bool) -> tuple[Halving | None, list[str]]:
    """The run's halving rule: the spec's ``halving:``, else the defaults when ``--halving`` asks;
    and what makes it impossible (one line each)."""
    if spec.halving is not None:
        return spec.halving, []
    if not flag:
        return None, []
    rule, problems = resolve_cuts(Halving(), len(spec.plan), shortest_until(spec.static, spec.hyper))
    return (None, [f"--halving: {p.split(': ', 1)[1]}" for p in problems]) if problems else (rule, [])


def end_round(cell: Cell) -> int:
    """Rounds the cell trains in all: its plan's rounds times its repeats."""
    return len(cell.plan) * cell.options.until


def epochs_per_round(cell: Cell) -> list[int]:
    return [r.num_epochs for r in cell.plan.root]


# ----------------------------------------------------------------------------- strata and levels


def by_stratum(cells: list[Cell]) -> dict[str, list[Cell]]:
    """The cells of each inputs x prediction stratum, in grid order; strata in name order."""
    out: dict[str, list[Cell]] = {}
    for c in cells:
        out.setdefault(stratum_key(c), []).append(c)
    return dict(sorted(out.items()))


def level_of(cell: Cell, factor: str) -> str:
    return json.dumps(cell.hyper[factor], sort_keys=True)


def factors_of(cells: list[Cell]) -> list[str]:
    """The hyper factors with several levels among ``cells`` (the strata's own factors aside)."""
    names = list(dict.fromkeys(k for c in cells for k in c.hyper if k not in STRATA))
    return [f for f in names if len({level_of(c, f) for c in cells if f in c.hyper}) > 1]


def pairs_of(cell: Cell, factors: list[str]) -> set[tuple[str, str]]:
    return {(f, level_of(cell, f)) for f in factors if f in cell.hyper}


def keep_bound(n: int, eta: int, cells: list[Cell]) -> int:
    """The most cells a cut of ``n`` keeps: ``ceil(n / eta)``, or the level minimums where they need more.

    Walking a ranking, the first cell brings one level of every factor and each later one at least
    one new level, so the level minimums never take more than ``sum(levels - 1) + 1`` cells. Where
    that is at most ``ceil(n / eta)`` (the published grid: 14 against 140) a cut keeps exactly
    ``ceil(n / eta)``, so the cells per cut follow from the counts alone.
    """
    factors = factors_of(cells)
    levels = sum(len({level_of(c, f) for c in cells}) - 1 for f in factors) + 1
    return min(n, max(math.ceil(n / eta), levels)) if n else 0


def hash_unit(text: str) -> float:
    """A fixed pseudo-random number in [0, 1) for ``text``."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:13], 16) / 16**13


# ----------------------------------------------------------------------------- the audit set


def audit_ids(cells: list[Cell], rule: Halving) -> frozenset[str]:
    """The audit set: in each stratum, ``max(audit_per_stratum, round(audit_fraction x n))`` cells.

    Balanced: each pick is the cell whose levels the picks so far show least often (summed over
    factors), the first in hash order among equals, so every factor's levels appear about equally.
    Fixed by the ids alone: the same cells whatever has been trained.
    """
    chosen: set[str] = set()
    for members in by_stratum(cells).values():
        want = min(len(members), max(rule.audit_per_stratum, round(rule.audit_fraction * len(members))))
        factors = factors_of(members)
        left = sorted(members, key=lambda c: hash_unit("audit:" + c.id))
        pairs = {c.id: pairs_of(c, factors) for c in members}
        sharing: dict[tuple[str, str], list[str]] = {}
        for c in members:
            for p in pairs[c.id]:
                sharing.setdefault(p, []).append(c.id)
        shown = {c.id: 0 for c in members}  # how often the picks so far show this cell's levels, summed
        for _ in range(want):
            pick = min(left, key=lambda c: shown[c.id])  # the first in hash order among equals
            left.remove(pick)
            chosen.add(pick.id)
            for p in pairs[pick.id]:
                for other in sharing[p]:
                    shown[other] += 1
    return frozenset(chosen)


# ----------------------------------------------------------------------------- one cut


@dataclass(frozen=True)
class CellState:
    """What a cell's files say: rounds trained, its metrics.json status, its score at each cut reached."""

    rounds: int = 0  # rounds trained to their end, repeats counted
    status: str | None = None  # metrics.json's status (complete, diverged, failed); None while training
    scores: dict[int, Score] = field(default_factory=dict)  # cut round -> the score there

    def reached(self, cut_round: int) -> bool:
        """Trained to the cut, or ended before it (a failed or diverged cell waits for nothing)."""
        return self.status is not None or self.rounds >= cut_round


@dataclass(frozen=True)
class Verdict:
    """One cell at one cut: its score and rank, and whether it goes on, and why."""

    id: str
    label: str
    score: float | None  # validation Dice loss at the cut (None: no score, or a projection)
    mean_dice: float | None  # that epoch's mean validation Dice
    epoch: int | None  # epochs trained at the cut
    rank: int | None  # 1-based among the stratum's scored cells at this cut
    kept: bool
    why: str


@dataclass(frozen=True)
class Cut:
    """One stratum's decision at one cut."""

    stratum: str
    index: int  # 1-based: the first cut is 1
    round: int  # rounds trained at the cut, repeats counted
    ranked: int  # cells at the cut (the audit cells aside)
    kept: int
    verdicts: list[Verdict]
    projected: bool = False  # not decided yet: ranked by a fixed hash, to price the run (flows/plan/halving.py)


def decide(stratum: str, index: int, cut_round: int, cells: list[Cell], states: dict[str, CellState],
           rule: Halving, projected: bool = False) -> Cut:
    """The cut: the best cell of every level, then the best of the rest up to ceil(n / eta).

    A projection ranks by a fixed hash of the ids instead of scores, and keeps :func:`keep_bound`
    cells: the most a real decision can keep, so the price it gives is never too low.
    """
    if projected:
        scores = {c.id: hash_unit(f"project:{index}:{c.id}") for c in cells}
    else:
        scores = {c.id: s.val_dice_loss for c in cells if (s := states[c.id].scores.get(cut_round)) is not None}
    ranked = sorted((c for c in cells if c.id in scores), key=lambda c: (scores[c.id], c.id))
    rank = {c.id: i for i, c in enumerate(ranked, 1)}
    factors = factors_of(cells)
    top = math.ceil(len(cells) / rule.eta)
    covered: set[tuple[str, str]] = set()
    brings: dict[str, tuple[str, str]] = {}  # a cell kept for the level minimums -> the level it brings
    for c in ranked:
        new = pairs_of(c, factors) - covered
        if new:
            brings[c.id] = min(new)
            covered |= new
    keep_n = max(top, len(brings)) if not projected else max(keep_bound(len(cells), rule.eta, cells), len(brings))
    rest = [c.id for c in ranked if c.id not in brings][: max(0, keep_n - len(brings))]
    kept = set(brings) | set(rest)
    verdicts = []
    for c in cells:
        r = rank.get(c.id)
        s = states[c.id].scores.get(cut_round) if not projected else None
        if r is None:
            why = f"no score at round {cut_round}: {states[c.id].status or 'not trained'} before the cut"
        elif c.id in kept and r > top:
            f, level = brings.get(c.id, ("", ""))
            why = (f"level minimum: the best cell with {f}={json.loads(level)} (rank {r} of {len(cells)})" if f
                   else f"rank {r} of {len(cells)}: fills the cut's {keep_n}")
        elif c.id in kept:
            why = f"rank {r} of {len(cells)}: in the top 1/{rule.eta}"
        elif r <= top:
            why = f"rank {r} of {len(cells)}: in the top 1/{rule.eta}, but its place went to a level minimum"
        else:
            why = f"rank {r} of {len(cells)}: below the {len(kept)} kept"
        verdicts.append(Verdict(c.id, c.label, s.val_dice_loss if s else None, s.mean_dice if s else None,
                                s.epochs if s else None, r, c.id in kept, why))
    return Cut(stratum, index, cut_round, len(cells), len(kept), verdicts, projected)


# ----------------------------------------------------------------------------- every cut


@dataclass(frozen=True)
class Standing:
    """Where a cell stands in the halving: what it trains to next, or where the rule stopped it."""

    stratum: str
    audit: bool = False  # an audit cell: trains to the end whatever it scores
    passed: int = 0  # cuts it went on from
    target: int | None = None  # rounds it trains to next (a cut), None: to the end (or stopped)
    stopped_at: int | None = None  # the cut (1-based) that stopped it
    why: str = ""  # the rule's reason at its last decided cut

    def reached(self) -> str:
        """The cut it reached, as summary.csv's ``cut`` column says it: a cut's number, or ``end``."""
        if self.stopped_at is not None:
            return str(self.stopped_at)
        return "end" if self.target is None else str(self.passed)


@dataclass(frozen=True)
class Replay:
    """Every cut decided (or, projected, to be decided), and each cell's standing after them."""

    rule: Halving
    audit: frozenset[str]
    cuts: list[Cut]
    standing: dict[str, Standing]

    def span(self, cell_id: str) -> tuple[int, int | None]:
        """The rounds (from, to; None: the end) of the stretch a cell trains now."""
        s = self.standing[cell_id]
        return (0 if s.audit or not s.passed else self.rule.cuts[s.passed - 1]), s.target


def replay_cuts(cells: list[Cell], rule: Halving, audit: frozenset[str], states: dict[str, CellState],
                project: bool = False) -> Replay:
    """Decide every cut the cells' states allow, stratum by stratum (the audit cells aside).

    ``project``: decide the cuts still waiting too, by :func:`decide`'s projection, to price the
    cells that will train after them (flows/plan/halving.py).
    """
    cuts: list[Cut] = []
    standing: dict[str, Standing] = {}
    for stratum, members in by_stratum(cells).items():
        alive = [c for c in members if c.id not in audit]
        standing |= {c.id: Standing(stratum, audit=True, why="audit: trains to the end") for c in members
                     if c.id in audit}
        passed, why, projecting = 0, {c.id: "" for c in alive}, False
        for index, cut_round in enumerate(rule.cuts, 1):
            projecting = projecting or not all(states[c.id].reached(cut_round) for c in alive)
            if projecting and not project:
                break
            cut = decide(stratum, index, cut_round, alive, states, rule, projected=projecting)
            cuts.append(cut)
            for v in cut.verdicts:
                why[v.id] = v.why
                if not v.kept:
                    standing[v.id] = Standing(stratum, passed=passed, stopped_at=index, why=v.why)
            alive = [c for c in alive if standing.get(c.id) is None]
            passed = index
        target = rule.cuts[passed] if passed < len(rule.cuts) else None
        standing |= {c.id: Standing(stratum, passed=passed, target=target, why=why[c.id]) for c in alive}
    return Replay(rule, audit, cuts, standing)


def due_stretches(cells: list[Cell], replay: Replay, states: dict[str, CellState]) -> dict[tuple, list[Cell]]:
    """The cells that must train now, by the stretch (from, to rounds) they train: not stopped by a cut,
    not ended (complete, failed or diverged: a cut counts those as they stand), short of their target."""
    out: dict[tuple, list[Cell]] = {}
    for c in cells:
        s, st = replay.standing[c.id], states[c.id]
        if s.stopped_at is not None or st.status is not None or (s.target is not None and st.rounds >= s.target):
            continue
        out.setdefault(replay.span(c.id), []).append(c)
    return out


# ----------------------------------------------------------------------------- on disk


def read_state(grid_dir: Path, cell: Cell, rule: Halving) -> CellState:
    """A cell's state from its own files: metrics.json's status, history.csv's rounds and cut scores."""
    d = cell_dir(grid_dir, cell)
    metrics = read_metrics(d)
    status = metrics.status if isinstance(metrics, CellMetrics) else ("failed" if isinstance(metrics, str) else None)
    rows = read_history(d)
    epochs = epochs_per_round(cell)
    scores = {r: s for r in rule.cuts if (s := score_at(rows, epochs, r)) is not None}
    return CellState(rounds_done(rows, epochs), status, scores)


def decisions_json(replay: Replay, cells: list[Cell]) -> dict[str, Any]:
    """``<grid>/halving.json``: the rule, the audit set, each decided cut (each cell's score, rank,
    kept or stopped and why) and each cell's standing."""
    label = {c.id: c.label for c in cells}
    return {
        "rule": replay.rule.model_dump(),
        "audit": sorted(replay.audit),
        "cuts": [{"stratum": c.stratum, "cut": c.index, "round": c.round, "ranked": c.ranked, "kept": c.kept,
                  "cells": [vars(v) for v in c.verdicts]} for c in replay.cuts if not c.projected],
        "cells": {cid: {"label": label[cid], "stratum": s.stratum, "audit": s.audit, "cut": s.reached(),
                        "trains_to": "end" if s.target is None and s.stopped_at is None else s.target,
                        "why": s.why} for cid, s in replay.standing.items()},
    }
