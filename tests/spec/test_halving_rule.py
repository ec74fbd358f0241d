"""The halving rule (flows/spec/halving.py): the spec key, the audit set, one cut, and the replay of all cuts."""

from __future__ import annotations

from collections import Counter

import pytest

from autolabel.scores import Score
from flows.spec.halving import (
    CellState,
    audit_ids,
    by_stratum,
    decide,
    keep_bound,
    level_of,
    replay_cuts,
    rule_for,
)
from flows.spec.parse import Halving, SpecError, check_spec
from tests.conftest import grid_cells

HYPER = {"lr": [0.001, 0.002, 0.004], "gamma": [0.8, 0.9], "bce_weight": [0.5, 0.75], "inputs": ["full", "anat"]}


def spec_of(**top) -> dict:
    return {"name": "t", "static": {"until": 2}, "hyper": {"lr": [0.001, 0.002]}, **top}


def test_the_spec_key_the_flag_and_their_defaults():
    assert check_spec(spec_of()).halving is None
    assert check_spec(spec_of(halving=True)).halving == Halving(eta=3, cuts=[1, 3])  # 3 rounds x until 2
    assert check_spec(spec_of(halving={"eta": 2, "audit_fraction": 0.1})).halving.cuts == [1, 3]
    one_repeat = check_spec({"name": "t", "hyper": {"lr": [0.001]}})  # 3 rounds, until 1: the end is no cut
    assert rule_for(one_repeat, True)[0].cuts == [1] and rule_for(one_repeat, False) == (None, [])
    flat = check_spec({"name": "t", "hyper": {"lr": [0.001]}, "plan": [{}]})
    assert rule_for(flat, True)[0] is None and "no round boundary to cut at" in rule_for(flat, True)[1][0]
    with pytest.raises(SpecError) as e:
        check_spec(spec_of(halving={"eta": 1, "cuts": [3, 6], "speed": 2}))
    assert any(line.startswith("halving.eta:") for line in e.value.lines)
    assert any(line.startswith("halving.speed:") for line in e.value.lines)
    with pytest.raises(SpecError) as e:
        check_spec(spec_of(halving={"cuts": [3, 6]}))
    assert e.value.lines == ["halving.cuts: [3, 6]: each cut is a round from 1 to 5, before the end (the shortest "
                             "cell trains 6 rounds: 3 x until 2)"]


def test_the_audit_set_is_balanced_per_stratum_and_fixed_by_the_ids():
    cells = grid_cells({"lr": [1e-3, 2e-3, 3e-3, 4e-3, 5e-3], "gamma": [0.8, 0.9, 1.0], "bce_weight": [0.5, 0.75],
                        "inputs": ["full", "anat"]})
    audit = audit_ids(cells, Halving(audit_fraction=0.2))
    for members in by_stratum(cells).values():
        mine = [c for c in members if c.id in audit]
        assert len(mine) == round(0.2 * 30)  # 6 of each stratum's 30
        for f, levels in (("lr", 5), ("gamma", 3), ("bce_weight", 2)):
            counts = Counter(level_of(c, f) for c in mine)
            assert len(counts) == levels and max(counts.values()) - min(counts.values()) <= 1, (f, counts)
    assert audit_ids(list(reversed(cells)), Halving(audit_fraction=0.2)) == audit  # order plays no part
    small = audit_ids(cells, Halving(audit_fraction=0.01, audit_per_stratum=2))
    assert len(small) == 4  # at least 2 a stratum


def scored_states(cells, scores: dict[str, float], rounds: int = 1) -> dict[str, CellState]:
    return {c.id: CellState(rounds=rounds, scores={1: Score(scores[c.id], 1 - scores[c.id], 0, 0, 1, 1, 2)})
            for c in cells}


def test_a_cut_keeps_the_best_third_and_the_best_cell_of_every_level_ties_to_the_lower_id():
    cells = [c for c in grid_cells(HYPER) if c.hyper["inputs"] == "full"]  # 12 cells: 3 lr x 2 gamma x 2 bce
    # lr 0.004 is worst everywhere: only the level minimum keeps one of its cells.
    scores = {c.id: (0.9 if c.hyper["lr"] == 0.004 else 0.2) + 0.01 * i for i, c in enumerate(cells)}
    cut = decide("full-area", 1, 1, cells, scored_states(cells, scores), Halving())
    kept = [v for v in cut.verdicts if v.kept]
    # ceil(12 / 3) = 4, or more where the best cells of the levels need more, never over the bound
    assert 4 <= cut.kept == len(kept) <= keep_bound(12, 3, cells) == 5 and cut.ranked == 12
    tops = sorted(v.rank for v in kept if "level minimum" not in v.why)
    assert tops == list(range(1, len(tops) + 1))  # the others kept are the best by rank
    for f in ("lr", "gamma", "bce_weight"):
        assert {c.hyper[f] for c in cells if c.id in {v.id for v in kept}} == set(HYPER[f])
    worst_lr = [v for v in kept if "lr=0.004" in v.why]
    assert len(worst_lr) == 1 and worst_lr[0].rank == 9  # the best of lr 0.004 (ranks 9-12)
    assert any("its place went to a level minimum" in v.why for v in cut.verdicts if not v.kept)
    # Ties go to the lower cell id.
    tied = decide("s", 1, 1, cells[:2], scored_states(cells[:2], {c.id: 0.5 for c in cells[:2]}), Halving(eta=2))
    assert [v.rank for v in sorted(tied.verdicts, key=lambda v: v.id)] == [1, 2]


def test_the_cells_per_cut_follow_from_the_counts():
    cells = grid_cells({"lr": [1e-3, 2e-3, 3e-3, 4e-3, 5e-3], "gamma": [0.8, 0.9, 1.0], "bce_weight": [0.5, 0.75],
                        "batch_size": [2, 4, 6], "inputs": ["full"]})  # 90 cells: the bound 4+2+1+2+1=10 fits
    for n in (90, 40, 30):
        assert keep_bound(n, 3, cells) == -(-n // 3)
    assert keep_bound(12, 3, cells) == 10  # where the level minimums need more, they get it
    # A real cut keeps ceil(n / eta) whatever the scores, once the minimums fit.
    for seed in range(3):
        scores = {c.id: (hash((seed, c.id)) % 1000) / 1000 for c in cells}
        assert decide("s", 1, 1, cells, scored_states(cells, scores), Halving()).kept == 30


def test_the_replay_waits_for_a_whole_stratum_and_depends_only_on_the_history_up_to_the_cut():
    rule = Halving(cuts=[1, 3], audit_per_stratum=1, audit_fraction=0)
    cells = grid_cells(HYPER)
    audit = audit_ids(cells, rule)
    scores = {c.id: 0.1 + 0.01 * i for i, c in enumerate(cells)}
    states = scored_states(cells, scores)
    anat = [c for c in cells if c.hyper["inputs"] == "anat" and c.id not in audit]
    states[anat[0].id] = CellState(rounds=0)  # one anat cell has not reached the first cut
    replay = replay_cuts(cells, rule, audit, states)
    assert [(c.stratum, c.index) for c in replay.cuts] == [("full-area", 1)]  # full moves on alone
    assert all(replay.standing[c.id].target == 1 for c in anat)  # anat waits at the first cut
    full_kept = [v.id for v in replay.cuts[0].verdicts if v.kept]
    assert all(replay.standing[i].target == 3 and replay.span(i) == (1, 3) for i in full_kept)
    assert all(replay.standing[c.id].target is None and replay.span(c.id) == (0, None) for c in cells if c.id in audit)
    # A cell trained further (a run without halving) changes no decision already made.
    done = {i: CellState(rounds=6, status="complete", scores=states[i].scores) for i in full_kept[:1]}
    again = replay_cuts(cells, rule, audit, states | done)
    assert again.cuts[0] == replay.cuts[0]
    # A failed cell that ended before the cut waits for nothing and is ranked nowhere.
    states[anat[0].id] = CellState(rounds=0, status="failed")
    cut = next(c for c in replay_cuts(cells, rule, audit, states).cuts if c.stratum == "anat-area")
    lost = next(v for v in cut.verdicts if v.id == anat[0].id)
    assert not lost.kept and lost.rank is None and "failed before the cut" in lost.why
    # The projection decides the rest by the counts, to price the run.
    projected = replay_cuts(cells, rule, audit, {c.id: CellState() for c in cells}, project=True)
    assert [(c.index, c.ranked, c.kept, c.projected) for c in projected.cuts if c.stratum == "full-area"] == \
        [(1, 11, 5, True), (2, 5, 5, True)]
