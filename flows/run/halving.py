"""Halving while a grid runs: each stratum's cut decided as soon as its cells reach it, the survivors launched.

    driver = HalvingDriver(plan.cells, plan.halving.rule, plan.halving.audit, plan.halving.states,
                           plan.grid_dir, plan.pricing, first_index=len(plan.packs))
    outcomes = launch_packs(plan.packs, runner, ledger, stop, settings, key, follow=driver.follow)
    outcomes |= driver.outcomes()            # cells the rule stopped, cells still waiting at a cut

The plan's packs train every cell to its next cut (the trainer's ``--until-round``; audit cells to
the end). When a pack ends, :meth:`HalvingDriver.follow` reads its cells' files again, replays every
cut (flows.spec.halving.replay_cuts: the same decisions a rerun would make from the same files),
writes ``<grid>/halving.json`` when a decision was added, and returns the packs of the cells that a
new decision let go on, priced for their stretch: the launch window runs them next, each reserving
its price under the cap as any pack does. Strata never wait for one another. Nothing here is local:
on ECS a pack's files come down from S3 when its task ends, and a promoted cell resumes from its S3
checkpoint in a new task.
"""

from __future__ import annotations

from pathlib import Path

from autolabel.celldir import write_json_atomic
from flows.cost.estimate import Pack, Pricing, price_stretches
from flows.spec.cells import Cell, CellOutcome, stratum_key
from flows.spec.halving import (
    CellState,
    decisions_json,
    due_stretches,
    read_state,
    replay_cuts,
)
from flows.spec.parse import Halving

DECISIONS = "halving.json"


class HalvingDriver:
    """The cuts of one run: the cells' states as the packs end, the decisions, the packs they make due."""

    def __init__(self, cells: list[Cell], rule: Halving, audit: frozenset[str], states: dict[str, CellState],
                 grid_dir: Path, pricing: Pricing, first_index: int, launched: list[Pack] | None = None):
        """``states``: the cells' files as the plan read them; ``first_index``: the first new pack's index;
        ``launched``: the plan's packs (their cells' stretches are not launched twice)."""
        self.cells, self.rule, self.audit, self.grid_dir, self.pricing = cells, rule, audit, Path(grid_dir), pricing
        self.states = dict(states)
        self.next_index = first_index
        self.queued = {(c.id, p.rounds or (0, None)) for p in launched or [] for c in p.cells}
        self.replay = replay_cuts(cells, rule, audit, self.states)
        self.write()

    def follow(self, pack: Pack, outcomes: dict[str, CellOutcome]) -> list[Pack]:
        """After ``pack``: its cells' states, every cut replayed, and the packs now due in its strata."""
        for c in pack.cells:
            self.states[c.id] = read_state(self.grid_dir, c, self.rule)
        decided = len(self.replay.cuts)
        self.replay = replay_cuts(self.cells, self.rule, self.audit, self.states)
        if len(self.replay.cuts) != decided:
            self.write()
        strata = {stratum_key(c) for c in pack.cells}
        mine = [c for c in self.cells if stratum_key(c) in strata]
        due = {span: [c for c in group if (c.id, span) not in self.queued]
               for span, group in due_stretches(mine, self.replay, self.states).items()}
        packs = price_stretches({s: g for s, g in due.items() if g}, self.pricing, self.next_index)
        self.next_index += len(packs)
        self.queued |= {(c.id, p.rounds or (0, None)) for p in packs for c in p.cells}
        return packs

    def outcomes(self) -> dict[str, CellOutcome]:
        """The cells the rule stopped (status ``cut``: by design, not a failure), and the cells paused at a
        cut their stratum has not decided yet (``paused``: a rerun goes on once the others get there)."""
        out = {}
        for c in self.cells:
            s, st = self.replay.standing[c.id], self.states[c.id]
            if s.stopped_at is not None:
                out[c.id] = CellOutcome("cut", f"stopped by halving at cut {s.stopped_at} (round "
                                               f"{self.rule.cuts[s.stopped_at - 1]}): {s.why}")
            elif st.status is None and s.target is not None and st.rounds >= s.target:
                out[c.id] = CellOutcome("paused", f"at cut {s.passed + 1} (round {s.target}), waiting for the rest "
                                                  f"of {s.stratum} to get there; a rerun goes on")
        return out

    def write(self) -> None:
        """``<grid>/halving.json``: every decision so far and each cell's standing (recomputed from files)."""
        write_json_atomic(self.grid_dir / DECISIONS, decisions_json(self.replay, self.cells))
