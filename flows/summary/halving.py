"""A halved grid's summary: the tests where they stay valid, the selected cells described, the cuts checked.

    rows, hs = summarize_halving(grid_dir, cells, rows, rule)    # rows gain `cut` and `audit`; hs: HalvingSummary
    report = replay_report(grid_dir, cells, rows, rule)          # a grid trained in full: would halving have agreed?

Which statistics a halved grid still supports, and why:

- **All cells at the first cut.** Every cell trains to it, so the effect tests (flows/summary/stats.py)
  run on all of them there, each scored as metrics.json would be had the plan ended at the cut
  (autolabel.scores). They answer "does it matter after N epochs", not at the end: short horizons
  favour small steps and fast decay (Wu et al., ICLR 2018).
- **The audit cells at the end.** A sample fixed by a hash of the ids before training, trained to the
  end whatever it scored: the same tests on them are unbiased, with the power their number gives
  (reported at a medium effect, partial eta^2 = 0.06: Cohen 1988).
- **The selected cells** (kept at every cut) are described only: the winner per stratum and the best
  cell per level. Tests on the survivors of a drop-the-losers selection are biased (Sampson & Sill
  2005; Bowden & Glimm 2014).
- **How well each cut predicted the end**, on the audit cells: the rank correlation of the cut's
  score with the final one per stratum, whether each factor's best level changed, and the late
  bloomers (an audit cell the first cut would have stopped that ended in its stratum's top 10%).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from flows.spec.cells import Cell
from flows.spec.halving import Replay, audit_ids, read_state, replay_cuts
from flows.spec.parse import Halving
from flows.summary.rows import (
    best_cells,
    fmt_level,
    level_key,
    scored,
    sorted_levels,
    stratum_of,
    varying_factors,
)
from flows.summary.stats import ALPHA, Effect, effects

MEDIUM = 0.06  # partial eta^2 of a "medium" effect (Cohen 1988): the size the audit's power is given for
TOP_SHARE = 0.1  # a late bloomer ends in its stratum's top 10%


class Prediction(BaseModel):
    """How well one cut foretold the end, on one stratum's audit cells."""

    stratum: str
    cut: int = Field(description="1-based cut")
    n: int = Field(description="audit cells scored at the cut and complete")
    spearman: float | None = Field(None, description="rank correlation of the cut's score with the final one")
    best_changed: dict[str, bool] = Field(default={}, description="factor -> its best level (mean Dice) changed")


class Selected(BaseModel):
    """A complete cell described (never tested): a stratum's winner, or the best cell of one level."""

    stratum: str
    factor: str = Field("", description="'' for the stratum's winner, else the factor of ``level``")
    level: Any = None
    id: str
    label: str
    mean_dice: float
    selected: bool = Field(description="True: kept by every cut; False: an audit cell")


class HalvingSummary(BaseModel):
    """What summary.json and summary.md say about a halved grid."""

    rule: dict[str, Any]
    cuts: list[dict[str, Any]] = Field(description="per stratum and decided cut: round, cells ranked and kept")
    first_cut: str = Field(description="where the first cut stands, in rounds and epochs")
    first_cut_n: int = Field(description="cells scored at the first cut")
    first_cut_effects: list[Effect] = Field(description="the effect tests on all cells at the first cut")
    audit_n: int = Field(description="audit cells complete")
    audit_effects: list[Effect] = Field(description="the effect tests on the audit cells at the end")
    audit_power: dict[str, float | None] = Field(description="pooled factor -> power at partial eta^2 0.06")
    selected: list[Selected] = Field(description="winners and best cells per level, described")
    predictions: list[Prediction]
    late_bloomers: list[str] = Field(description="labels of audit cells the first cut would have stopped that "
                                                 "ended in their stratum's top 10%")


# ----------------------------------------------------------------------------- the replay from files


def replay_grid(grid_dir: Path, cells: list[Cell], rule: Halving) -> tuple[Replay, dict]:
    """The cuts the cells' files give (as the run decided them), and the states they were read from."""
    states = {c.id: read_state(grid_dir, c, rule) for c in cells}
    return replay_cuts(cells, rule, audit_ids(cells, rule), states), states


def rows_at(rows: list[dict[str, Any]], states: dict, cut_round: int, ids: set[str] | None = None) -> list[dict]:
    """The rows as they stood at a cut: each scored cell's Dice and Dice loss there, as complete cells
    (what the tests read); cells without a score there are left out."""
    out = []
    for r in rows:
        s = states[r["id"]].scores.get(cut_round)
        if s is not None and (ids is None or r["id"] in ids):
            out.append(r | {"status": "complete", "mean_dice": s.mean_dice, "best_val_dice_loss": s.val_dice_loss})
    return out


def summarize_halving(grid_dir: Path, cells: list[Cell], rows: list[dict[str, Any]], rule: Halving,
                      alpha: float = ALPHA) -> tuple[list[dict[str, Any]], HalvingSummary]:
    """The rows with ``cut`` (the cut each cell reached: its number, or ``end``) and ``audit``, and the
    halved grid's statistics (the module docstring says which hold where)."""
    replay, states = replay_grid(grid_dir, cells, rule)
    rows = [r | {"cut": replay.standing[r["id"]].reached(), "audit": r["id"] in replay.audit} for r in rows]
    first = rule.cuts[0]
    at_first = rows_at(rows, states, first)
    audit_rows = [r for r in scored(rows) if r["audit"]]
    audit_effects = effects(audit_rows, alpha) if audit_rows else []
    epochs = sorted({s.epochs for st in states.values() if (s := st.scores.get(first))})
    total = max(len(c.plan) * c.options.until for c in cells)
    return rows, HalvingSummary(
        rule=rule.model_dump(),
        cuts=[{"stratum": c.stratum, "cut": c.index, "round": c.round, "ranked": c.ranked, "kept": c.kept}
              for c in replay.cuts],
        first_cut=f"round {first} of {total}, epoch {'/'.join(map(str, epochs)) or '?'}",
        first_cut_n=len(at_first),
        first_cut_effects=effects(at_first, alpha) if at_first else [],
        audit_n=len(audit_rows),
        audit_effects=audit_effects,
        audit_power={e.factor: power(e, alpha) for e in audit_effects if e.stratum == "all"},
        selected=describe_selected(rows),
        predictions=predictions(rows, states, replay),
        late_bloomers=late_bloomers(rows, states, replay),
    )


# ----------------------------------------------------------------------------- the pieces


def power(e: Effect, alpha: float = ALPHA, eta_sq: float = MEDIUM) -> float | None:
    """The F test's power to find a partial eta^2 of ``eta_sq`` with this effect's degrees of freedom:
    noncentral F with lambda = f^2 N over the N cells tested, f^2 = eta^2 / (1 - eta^2) (Cohen 1988;
    G*Power's fixed-effects ANOVA). None where the factor could not be tested."""
    if e.df is None or e.df[1] < 1:
        return None
    from scipy import stats as sp

    df1, df2 = e.df
    crit = sp.f.ppf(1 - alpha, df1, df2)
    return float(sp.ncf.sf(crit, df1, df2, eta_sq / (1 - eta_sq) * e.n))


def describe_selected(rows: list[dict[str, Any]]) -> list[Selected]:
    """Per stratum: its winner and the best complete cell of every level of every factor."""
    out = []
    done = scored(rows)
    for w in best_cells(rows):
        stratum = stratum_of(w)
        mine = [r for r in done if stratum_of(r) == stratum]
        out.append(selected(stratum, "", None, w))
        for f in varying_factors(mine):
            for level in sorted_levels(mine, f):
                best = best_cells([r for r in mine if level_key(r[f]) == level_key(level)])
                if best:
                    out.append(selected(stratum, f, level, best[0]))
    return out


def selected(stratum: str, factor: str, level: Any, r: dict[str, Any]) -> Selected:
    return Selected(stratum=stratum, factor=factor, level=level, id=r["id"], label=r["label"],
                    mean_dice=r["mean_dice"], selected=not r["audit"])


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation (scipy), None below 3 pairs or with no spread."""
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def best_level(rows: list[dict[str, Any]], factor: str) -> Any:
    """The level with the highest mean of mean_dice (raw, descriptive); ties to the first level."""
    means = []
    for level in sorted_levels(rows, factor):
        ys = [r["mean_dice"] for r in rows if level_key(r[factor]) == level_key(level)]
        means.append((-sum(ys) / len(ys), str(level_key(level)), level))
    return min(means)[2] if means else None


def predictions(rows: list[dict[str, Any]], states: dict, replay: Replay, audit_only: bool = True) -> list[Prediction]:
    """Per stratum and cut: how the audit cells' (or, replaying a full grid, all cells') scores at the
    cut ranked them against their final scores, and whether each factor's best level changed."""
    out = []
    final = {r["id"]: r for r in scored(rows) if r["audit"] or not audit_only}
    for stratum in sorted({stratum_of(r) for r in rows}):
        for k, cut_round in enumerate(replay.rule.cuts, 1):
            at = [r for r in rows_at([r for r in rows if r["id"] in final], states, cut_round)
                  if stratum_of(r) == stratum]
            if not at:
                continue
            end = [final[r["id"]] for r in at]
            rho = spearman([r["best_val_dice_loss"] for r in at], [r["best_val_dice_loss"] for r in end])
            factors = varying_factors(end)
            changed = {f: best_level(at, f) != best_level(end, f) for f in factors}
            out.append(Prediction(stratum=stratum, cut=k, n=len(at), spearman=rho, best_changed=changed))
    return out


def below_first_cut(row: dict[str, Any], states: dict, replay: Replay) -> bool:
    """Whether the first cut would have stopped this cell had it not been an audit cell: ranked among
    the cells that cut did rank, it falls below the number kept."""
    cut = next((c for c in replay.cuts if c.index == 1 and c.stratum == stratum_of(row) and not c.projected), None)
    s = states[row["id"]].scores.get(replay.rule.cuts[0])
    if cut is None or s is None:
        return False
    ahead = sum(1 for v in cut.verdicts if v.score is not None and (v.score, v.id) < (s.val_dice_loss, row["id"]))
    return ahead >= cut.kept


def late_bloomers(rows: list[dict[str, Any]], states: dict, replay: Replay) -> list[str]:
    """Audit cells below the first cut that ended in their stratum's top 10% by mean Dice."""
    out = []
    done = scored(rows)
    for r in done:
        if not r["audit"] or not below_first_cut(r, states, replay):
            continue
        mine = sorted((x["mean_dice"] for x in done if stratum_of(x) == stratum_of(r)), reverse=True)
        if r["mean_dice"] >= mine[max(0, math.ceil(TOP_SHARE * len(mine)) - 1)]:
            out.append(r["label"])
    return out


# ----------------------------------------------------------------------------- a full grid replayed


class ReplayStratum(BaseModel):
    """One stratum of a grid trained in full, with the halving rule replayed on its history."""

    stratum: str
    winner: str = Field(description="label of the full grid's winner (highest mean Dice)")
    winner_dice: float
    halved_winner: str = Field(description="the winner among the cells halving would have trained to the end")
    halved_dice: float
    same: bool
    lost_dice: float = Field(description="winner's mean Dice minus the halved winner's (0 when the same)")
    winner_fate: str = Field(description="'kept to the end', 'audit cell', or the cut that would have stopped it")


def replay_report(grid_dir: Path, cells: list[Cell], rows: list[dict[str, Any]],
                  rule: Halving) -> tuple[list[ReplayStratum], list[Prediction]]:
    """On a grid trained in full: per stratum, would halving have picked the same winner, what Dice it
    would have lost, and where the true winner would have been stopped; and how well each cut
    ranked every cell against its end (all cells, not only the audit ones: all trained to the end)."""
    replay, states = replay_grid(grid_dir, cells, rule)
    rows = [r | {"audit": r["id"] in replay.audit} for r in rows]
    to_end = {cid for cid, s in replay.standing.items() if s.stopped_at is None}
    out = []
    for w in best_cells(rows):
        stratum = stratum_of(w)
        h = best_cells([r for r in rows if r["id"] in to_end and stratum_of(r) == stratum])[0]
        s = replay.standing[w["id"]]
        fate = ("audit cell" if s.audit else "kept to the end" if s.stopped_at is None else
                f"stopped at cut {s.stopped_at} (round {rule.cuts[s.stopped_at - 1]}): {s.why}")
        out.append(ReplayStratum(stratum=stratum, winner=w["label"], winner_dice=w["mean_dice"],
                                 halved_winner=h["label"], halved_dice=h["mean_dice"], same=h["id"] == w["id"],
                                 lost_dice=w["mean_dice"] - h["mean_dice"], winner_fate=fate))
    return out, predictions(rows, states, replay, audit_only=False)


# ----------------------------------------------------------------------------- summary.md


def halving_markdown(h: HalvingSummary, effect_lines) -> list[str]:
    """summary.md's halving section; ``effect_lines(effects)`` renders tests as the report does."""
    lines = ["## Halving", "",
             f"Rule: eta {h.rule['eta']}, cuts after rounds {', '.join(map(str, h.rule['cuts']))} within each inputs x "
             f"prediction; the audit cells train to the end. `halving.json` has every decision and why.", ""]
    lines += ["| stratum | cut | round | ranked | kept |", "|---|---|---|---|---|"]
    lines += [f"| {c['stratum']} | {c['cut']} | {c['round']} | {c['ranked']} | {c['kept']} |" for c in h.cuts]
    lines += ["", f"### Does each hyperparameter matter at the first cut? ({h.first_cut_n} cells, {h.first_cut})", "",
              "Every cell trained to the first cut, so these tests are valid there; they say what matters after "
              "that many epochs, which short horizons bias towards small steps and fast decay.", ""]
    lines += effect_lines([e for e in h.first_cut_effects if e.stratum == "all"]) + [""]
    powers = ", ".join(f"{f} {p:.2f}" for f, p in h.audit_power.items() if p is not None)
    lines += [f"### At the end: the {h.audit_n} audit cells", "",
              "The tests above this section (\"Does each hyperparameter matter?\") use only the audit cells: a sample "
              "fixed before training, so they stay unbiased; tests on the selected cells would not. Power to find a "
              f"medium effect (partial eta² 0.06) at alpha {ALPHA}: {powers or 'n/a'}.", ""]
    lines += ["### The selected cells, described (not tested)", "",
              "| stratum | best of | cell | mean Dice | how it got there |", "|---|---|---|---|---|"]
    lines += [f"| {s.stratum} | {'winner' if not s.factor else f'{s.factor}={fmt_level(s.level)}'} | {s.label} | "
              f"{s.mean_dice:.4f} | {'selected by the cuts' if s.selected else 'audit cell'} |" for s in h.selected]
    lines += ["", "### How well each cut predicted the end (audit cells)", "",
              "| stratum | cut | n | Spearman | best level changed |", "|---|---|---|---|---|"]
    for p in h.predictions:
        changed = ", ".join(f for f, c in p.best_changed.items() if c) or "none"
        rho = f"{p.spearman:.2f}" if p.spearman is not None else "n/a"
        lines.append(f"| {p.stratum} | {p.cut} | {p.n} | {rho} | {changed} |")
    lines += ["", "Late bloomers (audit cells the first cut would have stopped, in their stratum's top 10% at the end): "
              + (", ".join(h.late_bloomers) or "none") + ".", ""]
    return lines
