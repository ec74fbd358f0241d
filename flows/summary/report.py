"""The summary for people: summary.md's text, the CLI's closing table, and numbers that cannot mislead.

    text = render_markdown(summary)          # summary.md, also the Prefect markdown artifact
    print(console_table(rows, grid_dir=grid_dir))

Numbers next to a verdict are printed with as many digits as decide it: p = 0.0496 and
p = 0.0504 differ at alpha = 0.05, so neither prints as "0.05"; partial eta² 0.0099 is not
"0.010" beside "negligible".
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from flows.summary.halving import HalvingSummary, halving_markdown
from flows.summary.plots import LEARNING_CURVES, plot_name
from flows.summary.rows import (
    best_cells,
    count_statuses,
    dice_columns,
    fmt_level,
    ranked,
    stratum_of,
)
from flows.summary.stats import ALPHA, ETA_SIZES, SMALL_N, Effect, Interaction


class BestCell(BaseModel):
    """The winner of one inputs x prediction stratum (highest mean validation Dice)."""

    stratum: str = Field(description="<inputs>-<prediction>, also the folder name under best/")
    id: str = Field(description="cell id (folder under cells/)")
    label: str = Field(description="readable cell label")
    mean_dice: float = Field(description="mean validation Dice over labels")
    dice: dict[str, float] = Field(description="validation Dice per label")
    best_val_dice_loss: float | None = Field(description="its best validation Dice loss (tie-breaker)")
    hyper: dict[str, Any] = Field(description="its hyperparameter values")
    path: str = Field(description="folder holding its options.json and plan.json")
    predictions: str | None = Field(None, description="its predictions.png (validation subjects), if drawn")
    predictions_note: str = Field("", description="why predictions.png was not drawn")
    top: list[str] = Field(default=[], description="ids of the stratum's best cells, this one first (up to 3)")


class Summary(BaseModel):
    """Everything the summary stage found; ``summary.json`` is this minus the markdown."""

    grid_dir: str = Field(description="the grid's directory")
    title: str = Field(description="grid name shown in headings")
    columns: list[str] = Field(description="row keys, in CSV order")
    rows: list[dict[str, Any]] = Field(description="one row per cell")
    counts: dict[str, int] = Field(description="cells per status")
    cap_usd: float | None = Field(description="the grid's dollar cap (None: no cap)")
    spent_usd: float = Field(description="dollars spent by the grid so far, all runs")
    best: list[BestCell] = Field(description="winner per inputs x prediction")
    effects: list[Effect] = Field(description="effect of each varying hyperparameter, pooled and per stratum")
    files: dict[str, str] = Field(description="what was written where")
    plots: list[str] = Field(description="PNG plots written")
    halving: HalvingSummary | None = Field(None, description="a halved grid: its cuts, tests where valid, checks")
    markdown: str = Field("", exclude=True, description="summary.md's text")


# ----------------------------------------------------------------------------- numbers


def decisive(x: float, cuts: tuple[float, ...], decimals: int) -> str:
    """``x`` with at least ``decimals`` decimals, more until it reads on the same side of every cut."""
    for d in range(decimals, 16):
        text = f"{x:.{d}f}"
        shown = float(text)
        if all(shown != c and (shown < c) == (x < c) for c in cuts if x != c):
            return text
    return repr(x)


def p_text(p: float | None, alpha: float = ALPHA, bare: bool = False) -> str:
    """'p<0.001', or p with the digits that put it on the right side of alpha."""
    if p is None:
        return ""
    text = "<0.001" if p < 0.001 else "=" + decisive(p, (alpha,), max(2, -math.floor(math.log10(p))))
    return text.lstrip("=") if bare else "p" + text


def eta_text(eta: float) -> str:
    """Partial eta² with the digits that put it on the right side of 0.01, 0.06 and 0.14."""
    return decisive(eta, tuple(cut for cut, _ in ETA_SIZES), 3)


def eta_size(eta: float) -> str:
    return next((name for cut, name in ETA_SIZES if eta >= cut), "negligible")


def _dice(v: float) -> str:
    return f"{v:.4f}"


def _signed(v: float) -> str:
    return f"{v:+.4f}"


# ----------------------------------------------------------------------------- sentences


def effect_sentence(e: Effect, alpha: float = ALPHA, plot: str | None = None) -> str:
    """One line answering "does <factor> matter?", with the best level's lead and its interval."""
    if e.verdict == "n/a":
        return f"{e.factor}: n/a ({e.reason}; n={e.n})"
    stats = _stats_text(e, alpha)
    tail = _interaction_text(e.interaction, alpha) + (f"; see {plot}" if plot else "")
    if e.verdict == "cannot be tested at this size":
        return (
            f"{e.factor}: cannot be tested at this size (smallest attainable p = {decisive(e.p_min, (alpha,), 3)}"
            f" > alpha over {e.permutations} relabellings; n={e.n}); observed {stats}; {_margin_text(e)}{tail}"
        )
    if e.verdict == "no detectable effect":
        return f"{e.factor}: no detectable effect on validation Dice ({stats}; n={e.n}){tail}"
    where = _margin_text(e)
    if e.verdict == "negligible":
        return f"{e.factor}: detectable but negligible ({stats}; n={e.n}); {where}{tail}"
    return f"{e.factor}: matters ({stats}, {eta_size(e.partial_eta_sq)}; n={e.n}); {where}{tail}"


def _stats_text(e: Effect, alpha: float) -> str:
    text = f"F={e.f:.2f}, {p_text(e.p, alpha)}"
    if e.p_perm is not None:
        text += f", {'exact' if e.exact else 'drawn'} permutation {p_text(e.p_perm, alpha)}"
    return text + f", partial eta²={eta_text(e.partial_eta_sq)}"


def _margin_text(e: Effect) -> str:
    m = e.margin
    if m is None:
        return ""
    mean = next((lv.mean for lv in e.levels if lv.level == m.best_level), None)
    pct = round(100 * m.confidence)
    return (
        f"best level {fmt_level(m.best_level)} (mean Dice {_dice(mean) if mean is not None else '?'}, "
        f"{_signed(m.dice)} Dice over {fmt_level(m.next_level)}, {pct}% CI {_signed(m.low)} to {_signed(m.high)})"
    )


def _interaction_text(i: Interaction | None, alpha: float) -> str:
    if i is None or i.verdict == "n/a":
        return ""
    if i.verdict == "differs between strata":
        return f"; its effect differs between strata (F={i.f:.2f}, {p_text(i.p, alpha)})"
    return f"; no detectable difference between strata ({p_text(i.p, alpha)})"


def _order_key(e: Effect) -> tuple[int, float]:
    tested = e.verdict in ("matters", "negligible", "no detectable effect")
    return (0 if tested else 1, -(e.partial_eta_sq or 0.0))


# ----------------------------------------------------------------------------- markdown


def render_markdown(s: Summary, alpha: float = ALPHA) -> str:
    """summary.md: counts, spend, does-each-factor-matter, best cells, where the files are."""
    lines = [f"# Grid summary: {s.title}", ""]
    lines += [f"**Cells:** {len(s.rows)} in all: " + ", ".join(f"{n} {k}" for k, n in s.counts.items()) + "."]
    lines += [f"**Spend:** {_spend_text(s.cap_usd, s.spent_usd)}", ""]
    lines += _not_complete_lines(s.rows)
    lines += ["## Does each hyperparameter matter?", ""]
    if s.halving:
        lines += [f"On the {s.halving.audit_n} audit cells at the end, the only complete cells a halved grid can "
                  "test without bias (see \"Halving\" for all cells at the first cut).", ""]
    pooled = sorted((e for e in s.effects if e.stratum == "all"), key=_order_key)
    plots = {Path(p).name: p for p in s.plots}
    for e in pooled:
        name = plot_name(e.factor)
        plot = f"plots/{name}" if name in plots else None
        lines.append(f"- {effect_sentence(e, alpha, plot)}")
    if not pooled:
        lines.append("No hyperparameter varies in this grid.")
    lines += ["", _method_text(alpha), ""]
    if s.halving:
        lines += halving_markdown(s.halving, lambda effs: [f"- {effect_sentence(e, alpha)}"
                                                           for e in sorted(effs, key=_order_key)])
    lines += ["## Best cell per inputs x prediction", ""]
    curves = next((p for p in s.plots if Path(p).name == LEARNING_CURVES), None)
    lines += _best_table(s.best, s.grid_dir) if s.best else ["No complete cell yet.", ""]
    if pooled:
        lines += ["## Per stratum", ""]
        lines += _effects_table([e for e in s.effects if e.stratum != "all"], alpha) + [""]
        inter = [e for e in pooled if e.interaction is not None]
        if any(e.interaction.verdict != "n/a" for e in inter):
            lines += ["## Does the effect differ between strata? (factor x inputs x prediction)", ""]
            lines += _interaction_table(inter, alpha) + [""]
    if curves:
        lines += ["## Learning curves", "", "Training and validation loss and validation Dice per epoch, one line per "
                  "cell (each repeat its own line), a row per inputs x prediction.", "",
                  f"![learning curves](plots/{LEARNING_CURVES})", ""]  # fmt: skip
    lines += ["## Files", ""]
    lines += [
        f"- `{s.files['csv']}`: one row per cell (hyperparameters, status, Dice, epochs, duration, cost)",
        f"- `{s.files['json']}`: the same rows plus counts, spend, best cells and every test",
        f"- `{s.files['plots']}/`: validation Dice by level of each hyperparameter; learning curves",
        f"- `{s.files['best']}/<inputs>-<prediction>/`: the winner's options.json, plan.json and predictions.png",
        "",
    ]
    return "\n".join(lines)


def _method_text(alpha: float) -> str:
    return (
        "Ordered by effect size. Response: mean validation Dice of each complete cell. Each factor is "
        "tested after all the others and the inputs x prediction stratum (type II main-effects ANOVA, "
        "levels as categories); partial eta² is its share of the variance the other factors leave "
        f"(0.01 small, 0.06 medium, 0.14 large). alpha = {alpha}. The best level's lead over the next is "
        "adjusted for the other factors, with a 95% t interval. Below "
        f"{SMALL_N} cells an exact permutation test decides, and a factor whose smallest attainable p "
        "is above alpha cannot be tested at that size."
    )


def _spend_text(cap: float | None, spent: float) -> str:
    if cap is None:
        return f"${spent:.2f} (no cap)"
    pct = 100 * spent / cap if cap else 0.0
    return f"${spent:.2f} of the ${cap:.2f} cap ({pct:.0f}%), ${max(cap - spent, 0):.2f} left"


def _not_complete_lines(rows: list[dict[str, Any]]) -> list[str]:
    bad = [r for r in rows if r["status"] not in ("complete", "cut")]
    cut = sum(r["status"] == "cut" for r in rows)
    if not bad:
        return [f"{cut} cells were stopped by halving, by design (see \"Halving\").", ""] if cut else []
    reasons = Counter(f"{r['status']}" + (f": {r['message']}" if r.get("message") else "") for r in bad)
    out = ["Cells that did not complete:", ""]
    out += [f"- {n} x {why}" for why, n in reasons.most_common(10)]
    if len(reasons) > 10:
        out += [f"- ... and {len(reasons) - 10} other reasons (see summary.csv)"]
    return out + [""]


def predict_commands(b: BestCell, grid_dir: str | Path) -> list[str]:
    """The commands that label a lab's subjects with this winner, and with its stratum's top cells
    averaged (python -m autolabel.predict; SUBJECTS_DIR is the lab's FreeSurfer folder)."""
    one = f"python -m autolabel.predict SUBJECTS_DIR --model {b.path} --out labels-{b.stratum}"
    if len(b.top) < 2:
        return [one]
    models = " ".join(f"--model {Path(grid_dir) / 'cells' / i}" for i in b.top)
    return [one, f"python -m autolabel.predict SUBJECTS_DIR {models} --out labels-{b.stratum}-top{len(b.top)}"]


def _best_table(best: list[BestCell], grid_dir: str) -> list[str]:
    labels = list(dict.fromkeys(k for b in best for k in b.dice))
    head = ["inputs x prediction", "cell", "id", "mean Dice", *labels]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b in best:
        per = [_dice(b.dice[k]) if k in b.dice else "" for k in labels]
        out.append(f"| {b.stratum} | {b.label} | `{b.id}` | {_dice(b.mean_dice)} | " + " | ".join(per) + " |")
    out += ["", "Their options.json and plan.json are in `best/<inputs>-<prediction>/`. To label a lab's own "
            "FreeSurfer subjects with a winner, or with its stratum's top cells averaged (an ensemble):", ""]
    for b in best:
        out += ["    " + c for c in predict_commands(b, grid_dir)] + [""]
    for b in best:
        if b.predictions:
            out += [f"**{b.stratum}** ({b.label}): validation subjects, true borders solid, predicted dashed, "
                    "Dice per subject above each.", "",
                    f"![{b.stratum} predictions](best/{Path(b.predictions).parent.name}/{Path(b.predictions).name})", ""]
        elif b.predictions_note:
            out += [f"**{b.stratum}**: {b.predictions_note}.", ""]
    return out


def _effects_table(effs: list[Effect], alpha: float) -> list[str]:
    cols = ["factor", "stratum", "n", "F", "p", "partial eta²", "verdict", "best level", "lead (95% CI)",
            "mean Dice by level"]  # fmt: skip
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for e in effs:
        means = ", ".join(f"{fmt_level(lv.level)}: {_dice(lv.mean)}" for lv in e.levels if lv.mean is not None)
        f = f"{e.f:.2f}" if e.f is not None else ""
        p = p_text(e.p, alpha, bare=True)
        if e.p_perm is not None:
            p = f"{p_text(e.p_perm, alpha, bare=True)} (perm., min {p_text(e.p_min, alpha, bare=True)})"
        eta = eta_text(e.partial_eta_sq) if e.partial_eta_sq is not None else ""
        verdict = e.verdict + (f" ({e.reason})" if e.reason else "")
        best = fmt_level(e.best_level) if e.best_level is not None else ""
        m = e.margin
        lead = f"{_signed(m.dice)} ({_signed(m.low)} to {_signed(m.high)})" if m and e.verdict != "n/a" else ""
        out.append(f"| {e.factor} | {e.stratum} | {e.n} | {f} | {p} | {eta} | {verdict} | {best} | {lead} | {means} |")
    return out


def _interaction_table(effs: list[Effect], alpha: float) -> list[str]:
    out = ["| factor | F | df | p | partial eta² | verdict |", "|" + "---|" * 6]
    for e in effs:
        i = e.interaction
        if i.verdict == "n/a":
            out.append(f"| {e.factor} |  |  |  |  | n/a ({i.reason}) |")
            continue
        out.append(
            f"| {e.factor} | {i.f:.2f} | {i.df[0]}, {i.df[1]} | {p_text(i.p, alpha, bare=True)} | "
            f"{eta_text(i.partial_eta_sq)} | {i.verdict} |"
        )
    return out


# ----------------------------------------------------------------------------- console


def console_table(rows: list[dict[str, Any]], limit: int = 20, grid_dir: Path | str | None = None) -> str:
    """The CLI's closing table: top cells by mean Dice, counts by status, where the files are."""
    order = ranked(rows)
    # Only the labels of the cells shown: an area-only top list needs no E0-E4 columns.
    shown = order[:limit]
    dice_cols = dice_columns(shown)
    head = ["#", "mean Dice", *[c[5:] for c in dice_cols], "status", "epochs", "time", "cost", "cell"]
    table = [head]
    for i, r in enumerate(shown, 1):
        table.append(
            [
                str(i),
                _num(r.get("mean_dice")),
                *[_num(r.get(c)) for c in dice_cols],
                r["status"],
                "" if r.get("epochs") is None else str(r["epochs"]),
                "" if r.get("duration_s") is None else f"{r['duration_s']:.1f}s",
                f"${r.get('cost_usd') or 0.0:.2f}",
                f"{r['label']} ({r['id'][:8]})",
            ]
        )
    widths = [max(len(row[j]) for row in table) for j in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    if len(order) > limit:
        lines.append(f"... {len(order) - limit} more cells in summary.csv")
    counts = count_statuses(rows)
    lines.append(f"cells: {len(rows)} total, " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    for r in best_cells(rows):
        lines.append(f"best {stratum_of(r)}: {r['label']} ({r['id']}) mean Dice {_dice(r['mean_dice'])}")
    if grid_dir is not None:
        g = Path(grid_dir)
        lines.append(f"files: {g / 'summary.md'}  {g / 'summary.csv'}  {g / 'summary.json'}")
        lines.append(f"       {g / 'plots'}/  {g / 'best'}/<inputs>-<prediction>/")
    return "\n".join(lines)


def _num(v: float | None) -> str:
    return "" if v is None else _dice(v)


def cells_table(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The Prefect cells table: best first, a compact set of columns, numbers as people read them.

    The full rows (every hyperparameter, loss, duration, message) stay in summary.csv.
    """
    labels = dice_columns(rows)
    return [
        {
            "cell": r["label"],
            "mean Dice": _num(r.get("mean_dice")),
            **{f"Dice {c[5:]}": _num(r.get(c)) for c in labels},
            "status": r["status"],
            "epochs": "" if r.get("epochs") is None else str(r["epochs"]),
            "cost": f"${r.get('cost_usd') or 0.0:.4f}",
        }
        for r in ranked(rows)
    ]
