"""The summary stage: one row per cell, the files a scientist reads, and the Prefect artifacts.

The flow calls, in order::

    rows = collect_rows(grid_dir, cells, outcomes, costs)        # reads every cells/<id>/metrics.json
    result = write_summary(grid_dir, cells, rows, cap_usd=..., spent_usd=...)
    publish_artifacts(result, key_prefix=artifact_key(grid_dir.name))
    print(console_table(rows, grid_dir=grid_dir))

``write_summary`` writes, under the grid's directory:

- ``summary.csv`` / ``summary.json``: one row per cell (id, label, every hyperparameter,
  status, mean and per-label validation Dice, epochs, duration, cost); the JSON adds
  counts, spend, the best cells and every factor's marginal effect;
- ``summary.md``: the same, for people (it is also the markdown artifact);
- ``plots/dice_by_<factor>.png``: validation Dice by level, one panel per inputs x prediction;
- ``best/<inputs>-<prediction>/``: the winning cell's ``options.json`` and ``plan.json``.

Benchmark (1800 cells): ``.venv/bin/python benchmarks/summarize.py``.
No torch here; Prefect is imported only by the artifact helpers.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

import numpy as np
from pydantic import BaseModel, Field

from autolabel.options import CellMetrics
from autolabel.celldir import read_metrics, write_json_atomic, write_text_atomic
from flows.cells import Cell, cell_dir

# The two factors that change the task itself: Dice is compared only within one of their
# combinations (a "stratum"), never across, because anat-vs-full and area-vs-ring differ
# far more than any training hyperparameter.
STRATA = ("inputs", "prediction")
# Columns every row has besides the hyperparameters and the per-label dice_<label> columns.
HEAD = ("id", "label")
TAIL = ("status", "mean_dice")
METRIC_TAIL = ("best_val_dice_loss", "epochs", "duration_s", "cost_usd", "message")
ALPHA = 0.05  # significance level of every test reported
# Below this many observations the F-test leans on normality; a permutation test does not.
SMALL_N = 30
PERMUTATIONS = 4999
# Cohen (1988) thresholds for eta squared: small 0.01, medium 0.06, large 0.14.
ETA_SIZES = ((0.14, "large"), (0.06, "medium"), (0.01, "small"))


class LevelStat(BaseModel):
    """Validation Dice of the complete cells at one level of a factor."""

    level: Any = Field(description="the factor's value, as in the spec")
    n: int = Field(description="complete cells at this level")
    mean: float | None = Field(description="mean of their mean_dice")
    std: float | None = Field(description="sample standard deviation (None below 2 cells)")


class Effect(BaseModel):
    """The marginal effect of one hyperparameter on validation Dice, in one stratum or pooled."""

    factor: str = Field(description="hyperparameter name, e.g. bce_weight")
    stratum: str = Field(description="'all' (pooled, strata as blocks) or e.g. 'full-area'")
    test: str = Field(description="the test used, in words")
    n: int = Field(description="complete cells entering the test")
    levels: list[LevelStat] = Field(description="per-level Dice, in level order")
    best_level: Any = Field(None, description="level with the highest mean Dice")
    f: float | None = Field(None, description="F statistic")
    df: tuple[int, int] | None = Field(None, description="(numerator, denominator) degrees of freedom")
    p: float | None = Field(None, description="p-value of the F-test")
    p_perm: float | None = Field(None, description="permutation-test p-value (small n only)")
    eta_sq: float | None = Field(None, description="eta squared (partial, after blocking, when pooled)")
    verdict: Literal["matters", "negligible", "no detectable effect", "n/a"] = Field(
        description="matters: p < alpha and eta^2 >= 0.01; negligible: p < alpha but eta^2 < 0.01"
    )
    reason: str = Field("", description="why the test is n/a")


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
    effects: list[Effect] = Field(description="marginal effect of each varying hyperparameter")
    files: dict[str, str] = Field(description="what was written where")
    plots: list[str] = Field(description="PNG plots written")
    markdown: str = Field("", exclude=True, description="summary.md's text")


# ----------------------------------------------------------------------------- rows


def collect_rows(
    grid_dir: Path,
    cells: list[Cell],
    outcomes: dict[str, str] | None = None,
    costs: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """One row per cell, in the order given: its hyperparameters, status and metrics.

    ``outcomes`` is what the flow knows about a cell ("skipped: cost cap", "failed: ...",
    "pending"); a complete ``metrics.json`` always wins, since it is written last.
    """
    outcomes, costs = outcomes or {}, costs or {}
    factors = _factor_names(cells)
    metrics = [read_metrics(cell_dir(grid_dir, c)) for c in cells]
    labels = list(dict.fromkeys(k for m in metrics if isinstance(m, CellMetrics) for k in m.dice))
    rows = []
    for cell, m in zip(cells, metrics):
        row: dict[str, Any] = {"id": cell.id, "label": cell.label}
        for name in factors:
            row[name] = cell.hyper[name] if name in cell.hyper else getattr(cell.options, name, None)
        status, message = _status(m, outcomes.get(cell.id))
        ok = isinstance(m, CellMetrics)
        row["status"] = status
        row["mean_dice"] = _finite(m.mean_dice) if ok else None
        for lab in labels:
            row[f"dice_{lab}"] = _finite(m.dice.get(lab)) if ok else None
        row["best_val_dice_loss"] = _finite(m.best_val_dice_loss) if ok else None
        row["epochs"] = m.epochs if ok else None
        row["duration_s"] = _finite(m.wall_seconds) if ok else None
        row["cost_usd"] = float(costs.get(cell.id, 0.0))
        row["message"] = message
        rows.append(row)
    return rows


def _factor_names(cells: list[Cell]) -> list[str]:
    """Union of hyper keys in first-seen order, plus inputs/prediction if they are static."""
    names = list(dict.fromkeys(k for c in cells for k in c.hyper))
    return names + [s for s in STRATA if s not in names]


def _status(m: CellMetrics | str | None, outcome: str | None) -> tuple[str, str]:
    if isinstance(m, CellMetrics) and m.status == "complete":
        return "complete", m.message
    if outcome:
        head, _, why = outcome.partition(":")
        return head.strip().lower() or "failed", why.strip() or (m.message if isinstance(m, CellMetrics) else "")
    if isinstance(m, CellMetrics):
        return m.status, m.message
    if isinstance(m, str):
        return "failed", m
    return "pending", ""


def _finite(x: float | None) -> float | None:
    # NaN/inf (a diverged run) would make summary.json invalid JSON.
    return None if x is None or not math.isfinite(x) else float(x)


def columns_of(rows: list[dict[str, Any]]) -> list[str]:
    """Row keys in first-seen order (every row from collect_rows has them all)."""
    return list(dict.fromkeys(k for r in rows for k in r))


def factor_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The hyperparameter columns of the rows (everything but ids, status and metrics)."""
    fixed = set(HEAD + TAIL + METRIC_TAIL)
    return [c for c in columns_of(rows) if c not in fixed and not c.startswith("dice_")]


def _scored(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("status") == "complete" and r.get("mean_dice") is not None]


def stratum_of(row: dict[str, Any], keys: tuple[str, ...] = STRATA) -> str:
    return "-".join(str(row.get(k)) for k in keys)


# ----------------------------------------------------------------------------- effects


def effects(rows: list[dict[str, Any]], alpha: float = ALPHA) -> list[Effect]:
    """Each varying hyperparameter's marginal effect on mean validation Dice.

    Per factor: first the pooled test ("all"), a two-way additive ANOVA with the
    inputs x prediction stratum as a blocking factor (one-way when there is one stratum),
    then a one-way ANOVA (scipy.stats.f_oneway) within each stratum.
    """
    out = []
    scored = _scored(rows)
    for factor in factor_columns(rows):
        if len({_level_key(r[factor]) for r in rows}) < 2:
            continue  # fixed in this grid: nothing to test
        blocks = tuple(k for k in STRATA if k != factor)
        out.append(factor_effect(factor, scored, blocks, "all", alpha))
        for stratum in sorted({stratum_of(r, blocks) for r in scored}):
            sub = [r for r in scored if stratum_of(r, blocks) == stratum]
            out.append(factor_effect(factor, sub, (), stratum, alpha))
    return out


def factor_effect(
    factor: str, rows: list[dict[str, Any]], blocks: tuple[str, ...], stratum: str, alpha: float = ALPHA
) -> Effect:
    """ANOVA of mean_dice across the factor's levels, blocked by ``blocks`` when several."""
    levels = _sorted_levels({_level_key(r[factor]): r[factor] for r in rows})
    y = np.array([r["mean_dice"] for r in rows], dtype=float)
    index = {_level_key(v): i for i, v in enumerate(levels)}
    lev = np.array([index[_level_key(r[factor])] for r in rows], dtype=int)
    block_names = sorted({stratum_of(r, blocks) for r in rows}) if blocks else [""]
    blk = np.array([block_names.index(stratum_of(r, blocks)) if blocks else 0 for r in rows], dtype=int)
    stats = [_level_stat(v, y[lev == i]) for i, v in enumerate(levels)]
    best = max((s for s in stats if s.mean is not None), key=lambda s: s.mean, default=None)
    blocked = len(block_names) > 1
    base = Effect(
        factor=factor,
        stratum=stratum,
        test=f"ANOVA blocked by {' x '.join(blocks)}" if blocked else "one-way ANOVA",
        n=len(y),
        levels=stats,
        best_level=best.level if best else None,
        verdict="n/a",
    )
    reason = _degenerate(y, lev, stats)
    if reason:
        return base.model_copy(update={"reason": reason, "best_level": None})
    result = _blocked_anova(y, lev, blk) if blocked else _one_way(y, lev, len(levels))
    if isinstance(result, str):
        return base.model_copy(update={"reason": result, "best_level": None})
    f, df, p, eta = result
    p_perm = _permutation_p(y, lev, blk) if len(y) < SMALL_N else None
    p_use = p_perm if p_perm is not None else p
    verdict = "no detectable effect" if p_use >= alpha else ("matters" if eta >= 0.01 else "negligible")
    return base.model_copy(update={"f": f, "df": df, "p": p, "p_perm": p_perm, "eta_sq": eta, "verdict": verdict})


def _level_key(v: Any) -> Any:
    # Lists/dicts (e.g. an image_size factor) are unhashable; their JSON text is a fine key.
    return json.dumps(v, sort_keys=True) if isinstance(v, (list, dict, tuple)) else v


def _sorted_levels(by_key: dict[Any, Any]) -> list[Any]:
    values = list(by_key.values())
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return sorted(values)
    return sorted(values, key=lambda v: str(v))


def _level_stat(level: Any, y: np.ndarray) -> LevelStat:
    return LevelStat(
        level=level,
        n=len(y),
        mean=float(y.mean()) if len(y) else None,
        std=float(y.std(ddof=1)) if len(y) > 1 else None,
    )


def _degenerate(y: np.ndarray, lev: np.ndarray, stats: list[LevelStat]) -> str:
    """Why no test is possible, or '' (checked up front so numpy/scipy never warn)."""
    present = [s for s in stats if s.n > 0]
    if len(present) < 2:
        only = ", ".join(_fmt(s.level) for s in present) or "none"
        return f"only one level among complete cells ({only})"
    thin = [s for s in present if s.n < 2]
    if thin:
        return f"level {_fmt(thin[0].level)} has {thin[0].n} complete cell (need >= 2 per level)"
    if np.ptp(y) == 0:
        return "every complete cell has the same Dice (zero variance)"
    within = sum(float(((y[lev == i] - y[lev == i].mean()) ** 2).sum()) for i in range(len(stats)) if (lev == i).any())
    if within <= 1e-12 * float(((y - y.mean()) ** 2).sum()):
        return "no spread within levels (cells at one level score identically)"
    return ""


def _one_way(y: np.ndarray, lev: np.ndarray, k: int) -> tuple[float, tuple[int, int], float, float]:
    from scipy.stats import f_oneway

    groups = [y[lev == i] for i in range(k) if (lev == i).any()]
    f, p = f_oneway(*groups)
    ss_total = float(((y - y.mean()) ** 2).sum())
    ss_between = sum(len(g) * (float(g.mean()) - float(y.mean())) ** 2 for g in groups)
    return float(f), (len(groups) - 1, len(y) - len(groups)), float(p), ss_between / ss_total


def _design(lev: np.ndarray, blk: np.ndarray, with_levels: bool) -> np.ndarray:
    """Intercept + block dummies (+ level dummies): the additive two-way model."""
    cols = [np.ones(len(lev))]
    cols += [(blk == b).astype(float) for b in range(1, blk.max() + 1)]
    if with_levels:
        cols += [(lev == i).astype(float) for i in range(1, lev.max() + 1)]
    return np.column_stack(cols)


def _rss(x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    coef, _, rank, _ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ coef
    return float(resid @ resid), int(rank)


def _blocked_anova(y: np.ndarray, lev: np.ndarray, blk: np.ndarray) -> tuple | str:
    """F-test of the factor after the blocks (type II for an additive model).

    Returns (F, (df1, df2), p, partial eta^2), or why it cannot be computed.
    """
    from scipy.stats import f as f_dist

    rss0, r0 = _rss(_design(lev, blk, False), y)
    rss1, r1 = _rss(_design(lev, blk, True), y)
    df1, df2 = r1 - r0, len(y) - r1
    if df1 == 0:
        return "levels are confounded with the strata (each stratum holds one level)"
    if df2 <= 0:
        return "too few cells for the number of levels and strata"
    if rss1 <= 1e-12 * rss0:
        return "no spread left after levels and strata"
    f = ((rss0 - rss1) / df1) / (rss1 / df2)
    return float(f), (df1, df2), float(f_dist.sf(f, df1, df2)), (rss0 - rss1) / rss0


def _permutation_p(y: np.ndarray, lev: np.ndarray, blk: np.ndarray, rounds: int = PERMUTATIONS) -> float:
    """Shuffle Dice among cells of the same block; p = share of shuffles fitting as well.

    Shuffling within blocks keeps the block-only fit fixed, so the residual sum of
    squares of the full model is an equivalent statistic (smaller = stronger effect).
    """
    x = _design(lev, blk, True)
    hat = x @ np.linalg.pinv(x)
    rng = np.random.default_rng(0)  # fixed: the same grid gives the same report
    ys = np.repeat(y[:, None], rounds, axis=1)
    for b in np.unique(blk):
        idx = np.flatnonzero(blk == b)
        ys[idx] = np.take_along_axis(ys[idx], rng.random((len(idx), rounds)).argsort(axis=0), axis=0)
    resid = ys - hat @ ys
    rss_perm = (resid**2).sum(axis=0)
    r = y - hat @ y
    rss_obs = float(r @ r)
    return float((1 + np.sum(rss_perm <= rss_obs * (1 + 1e-9))) / (1 + rounds))


# ----------------------------------------------------------------------------- best cells


def best_cells(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per inputs x prediction: highest mean_dice; ties -> lower best_val_dice_loss, then id."""
    winners: dict[str, dict[str, Any]] = {}
    for r in _scored(rows):
        s = stratum_of(r)
        if s not in winners or _rank_key(r) < _rank_key(winners[s]):
            winners[s] = r
    return [winners[s] for s in sorted(winners)]


def _rank_key(r: dict[str, Any]) -> tuple[float, float, str]:
    loss = r.get("best_val_dice_loss")
    return (-r["mean_dice"], math.inf if loss is None else loss, r["id"])


def write_best(grid_dir: Path, cells: list[Cell], rows: list[dict[str, Any]]) -> list[BestCell]:
    """Rebuild best/ from scratch, then swap it in, so no stale winner survives."""
    by_id = {c.id: c for c in cells}
    final = Path(grid_dir) / "best"
    for leftover in Path(grid_dir).glob(".best.*"):  # from a summary killed mid-swap
        shutil.rmtree(leftover, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(dir=grid_dir, prefix=".best."))
    out = []
    for r in best_cells(rows):
        cell = by_id[r["id"]]
        dest = staging / _best_dir_name(r)
        dest.mkdir(parents=True)
        _copy_inputs(cell_dir(grid_dir, cell), dest, cell)
        best = BestCell(
            stratum=stratum_of(r),
            id=r["id"],
            label=r["label"],
            mean_dice=r["mean_dice"],
            dice={k[5:]: v for k, v in r.items() if k.startswith("dice_") and v is not None},
            best_val_dice_loss=r["best_val_dice_loss"],
            hyper={k: r[k] for k in factor_columns(rows)},
            path=str(final / _best_dir_name(r)),
        )
        write_json_atomic(dest / "best.json", best.model_dump(mode="json"))
        (dest / "README.md").write_text(_best_readme(best))
        out.append(best)
    old = Path(grid_dir) / ".best.old"
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return out


def _best_dir_name(r: dict[str, Any]) -> str:
    return _safe_name(stratum_of(r))


def _copy_inputs(src: Path, dest: Path, cell: Cell) -> None:
    # The cell's own files are what it trained with; the models are the fallback.
    for name, model in (("options.json", cell.options), ("plan.json", cell.plan)):
        if (src / name).is_file():
            shutil.copyfile(src / name, dest / name)
        else:
            write_json_atomic(dest / name, model.model_dump(mode="json"))


def _best_readme(b: BestCell) -> str:
    per_label = ", ".join(f"{k} {v:.4f}" for k, v in b.dice.items())
    return (
        f"# Best cell for {b.stratum}\n\n"
        f"Cell `{b.id}` ({b.label}): mean validation Dice {b.mean_dice:.4f} ({per_label}).\n\n"
        "`options.json` and `plan.json` here are that cell's, ready for the final training.\n"
        "This folder is rebuilt by every summary: copy it elsewhere before training in it, e.g.\n\n"
        f"    cp -r best/{b.stratum} final-{b.stratum} && python -m autolabel.train final-{b.stratum}\n"
    )


# ----------------------------------------------------------------------------- plots


def write_plots(grid_dir: Path, rows: list[dict[str, Any]]) -> list[str]:
    """One PNG per varying factor: Dice by level, a panel per stratum of the other strata keys."""
    out_dir = Path(grid_dir) / "plots"
    shutil.rmtree(out_dir, ignore_errors=True)  # a factor that no longer varies leaves no plot
    out_dir.mkdir(parents=True)
    scored = _scored(rows)
    written = []
    for factor in factor_columns(rows):
        levels = _sorted_levels({_level_key(r[factor]): r[factor] for r in rows})
        if len(levels) < 2 or not scored:
            continue
        blocks = tuple(k for k in STRATA if k != factor)
        path = out_dir / f"dice_by_{_safe_name(factor)}.png"
        _plot_factor(path, factor, levels, scored, blocks)
        written.append(str(path))
    return written


def _plot_factor(path: Path, factor: str, levels: list[Any], rows: list[dict[str, Any]], blocks: tuple) -> None:
    # The object-oriented API (no pyplot) renders with Agg and keeps no global state.
    from matplotlib.figure import Figure

    panels = sorted({stratum_of(r, blocks) for r in rows})
    ncols = min(len(panels), 4)
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(3.2 * ncols + 0.6, 3.0 * nrows + 0.6), layout="constrained")
    # Own y-range per panel: strata differ far more than levels, and the levels are the point.
    axes = fig.subplots(nrows, ncols, squeeze=False)
    keys = [_level_key(v) for v in levels]
    rng = np.random.default_rng(0)
    for ax, panel in zip(axes.flat, panels):
        sub = [r for r in rows if stratum_of(r, blocks) == panel]
        data = [np.array([r["mean_dice"] for r in sub if _level_key(r[factor]) == k]) for k in keys]
        pos = [i + 1 for i, d in enumerate(data) if len(d)]
        ax.boxplot([d for d in data if len(d)], positions=pos, widths=0.6, showfliers=False)
        for i, d in enumerate(data):
            ax.scatter(i + 1 + rng.uniform(-0.18, 0.18, len(d)), d, s=6, alpha=0.5, color="tab:blue")
        ax.set_xticks(range(1, len(levels) + 1), [_fmt(v) for v in levels], rotation=30 if len(levels) > 4 else 0)
        ax.set_title(f"{panel or 'all'} (n={len(sub)})", fontsize=9)
        ax.set_xlabel(factor)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("validation Dice (mean)")
    fig.suptitle(f"Validation Dice by {factor}" + (f", per {' x '.join(blocks)}" if blocks else ""))
    fig.savefig(path, dpi=90)


# ----------------------------------------------------------------------------- files


def write_summary(
    grid_dir: Path,
    cells: list[Cell],
    rows: list[dict[str, Any]],
    *,
    cap_usd: float | None = None,
    spent_usd: float | None = None,
    title: str | None = None,
    plots: bool = True,
    alpha: float = ALPHA,
) -> Summary:
    """Write summary.csv/.json/.md, plots/ and best/ under ``grid_dir``; return what was found.

    ``spent_usd`` is the ledger's total (failed attempts included); None sums the rows' costs.
    """
    grid_dir = Path(grid_dir)
    grid_dir.mkdir(parents=True, exist_ok=True)
    cols = columns_of(rows)
    files = {
        "csv": str(grid_dir / "summary.csv"),
        "json": str(grid_dir / "summary.json"),
        "markdown": str(grid_dir / "summary.md"),
        "plots": str(grid_dir / "plots"),
        "best": str(grid_dir / "best"),
    }
    summary = Summary(
        grid_dir=str(grid_dir),
        title=title or grid_dir.name,
        columns=cols,
        rows=rows,
        counts=count_statuses(rows),
        cap_usd=cap_usd,
        spent_usd=float(sum(r.get("cost_usd") or 0.0 for r in rows) if spent_usd is None else spent_usd),
        best=write_best(grid_dir, cells, rows),
        effects=effects(rows, alpha),
        files=files,
        plots=write_plots(grid_dir, rows) if plots else [],
    )
    summary.markdown = render_markdown(summary, alpha)
    write_text_atomic(grid_dir / "summary.csv", _csv_text(rows, cols))
    write_json_atomic(grid_dir / "summary.json", summary.model_dump(mode="json"))
    write_text_atomic(grid_dir / "summary.md", summary.markdown)
    return summary


def count_statuses(rows: list[dict[str, Any]]) -> dict[str, int]:
    order = ["complete", "diverged", "failed", "skipped", "pending"]
    c = Counter(r["status"] for r in rows)
    return {s: c[s] for s in sorted(c, key=lambda s: (order.index(s) if s in order else len(order), s))}


def _csv_text(rows: list[dict[str, Any]], cols: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _csv_value(r.get(k)) for k in cols})
    return buf.getvalue()


def _csv_value(v: Any) -> Any:
    if v is None:
        return ""
    return json.dumps(v) if isinstance(v, (list, dict, tuple)) else v


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text).strip("_") or "factor"


# ----------------------------------------------------------------------------- markdown


def render_markdown(s: Summary, alpha: float = ALPHA) -> str:
    """summary.md: counts, spend, best cells, does-each-factor-matter, where the files are."""
    lines = [f"# Grid summary: {s.title}", ""]
    lines += [f"**Cells:** {len(s.rows)} in all: " + ", ".join(f"{n} {k}" for k, n in s.counts.items()) + "."]
    lines += [f"**Spend:** {_spend_text(s.cap_usd, s.spent_usd)}", ""]
    lines += _not_complete_lines(s.rows)
    lines += ["## Best cell per inputs x prediction", ""]
    lines += _best_table(s.best) if s.best else ["No complete cell yet.", ""]
    lines += ["## Does each hyperparameter matter?", ""]
    lines += [
        "Response: mean validation Dice of each complete cell. Pooled test: ANOVA across the "
        "factor's levels with the inputs x prediction stratum as a blocking factor; "
        f"eta² is the share of variance the factor explains (partial, after the strata). "
        f"alpha = {alpha}; with fewer than {SMALL_N} cells a permutation test decides.",
        "",
    ]
    pooled = [e for e in s.effects if e.stratum == "all"]
    lines += [f"- {effect_sentence(e)}" for e in pooled] or ["No hyperparameter varies in this grid."]
    lines += [""]
    if pooled:
        lines += ["### Per stratum", ""]
        lines += _effects_table([e for e in s.effects if e.stratum != "all"]) + [""]
    lines += ["## Files", ""]
    lines += [
        f"- `{s.files['csv']}`: one row per cell (hyperparameters, status, Dice, epochs, duration, cost)",
        f"- `{s.files['json']}`: the same rows plus counts, spend, best cells and effects",
        f"- `{s.files['plots']}/`: validation Dice by level of each hyperparameter",
        f"- `{s.files['best']}/<inputs>-<prediction>/`: the winner's options.json and plan.json",
        "",
    ]
    return "\n".join(lines)


def effect_sentence(e: Effect) -> str:
    """One line answering "does <factor> matter?"."""
    if e.verdict == "n/a":
        return f"{e.factor}: n/a ({e.reason}; n={e.n})"
    stats = f"F={e.f:.2f}, {_p_text(e.p)}"
    if e.p_perm is not None:
        stats += f", permutation {_p_text(e.p_perm)}"
    stats += f", eta²={e.eta_sq:.3f}"
    if e.verdict == "no detectable effect":
        return f"{e.factor}: no detectable effect on validation Dice ({stats}; n={e.n})"
    means = [lv for lv in e.levels if lv.mean is not None]
    worst = min(means, key=lambda lv: lv.mean)
    best = max(means, key=lambda lv: lv.mean)
    where = f"best level {_fmt(best.level)} (mean Dice {best.mean:.4f} vs {worst.mean:.4f} at {_fmt(worst.level)})"
    if e.verdict == "negligible":
        return f"{e.factor}: detectable but negligible ({stats}; n={e.n}); {where}"
    return f"{e.factor}: matters ({stats}, {_eta_size(e.eta_sq)}; n={e.n}); {where}"


def _spend_text(cap: float | None, spent: float) -> str:
    if cap is None:
        return f"${spent:.2f} (no cap)"
    pct = 100 * spent / cap if cap else 0.0
    return f"${spent:.2f} of the ${cap:.2f} cap ({pct:.0f}%), ${max(cap - spent, 0):.2f} left"


def _not_complete_lines(rows: list[dict[str, Any]]) -> list[str]:
    bad = [r for r in rows if r["status"] != "complete"]
    if not bad:
        return []
    reasons = Counter(f"{r['status']}" + (f": {r['message']}" if r.get("message") else "") for r in bad)
    out = ["Cells that did not complete:", ""]
    out += [f"- {n} x {why}" for why, n in reasons.most_common(10)]
    if len(reasons) > 10:
        out += [f"- ... and {len(reasons) - 10} other reasons (see summary.csv)"]
    return out + [""]


def _best_table(best: list[BestCell]) -> list[str]:
    labels = list(dict.fromkeys(k for b in best for k in b.dice))
    head = ["inputs x prediction", "cell", "id", "mean Dice", *labels]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b in best:
        per = [f"{b.dice[k]:.4f}" if k in b.dice else "" for k in labels]
        out.append(f"| {b.stratum} | {b.label} | `{b.id}` | {b.mean_dice:.4f} | " + " | ".join(per) + " |")
    return out + ["", "Their options.json and plan.json are in `best/<inputs>-<prediction>/`.", ""]


def _effects_table(effs: list[Effect]) -> list[str]:
    out = ["| factor | stratum | n | F | p | eta² | verdict | best level | mean Dice by level |", "|" + "---|" * 9]
    for e in effs:
        means = ", ".join(f"{_fmt(lv.level)}: {lv.mean:.4f}" for lv in e.levels if lv.mean is not None)
        f = f"{e.f:.2f}" if e.f is not None else ""
        p = _p_text(e.p, bare=True) if e.p_perm is None else f"{_p_text(e.p_perm, bare=True)} (perm.)"
        eta = f"{e.eta_sq:.3f}" if e.eta_sq is not None else ""
        verdict = e.verdict + (f" ({e.reason})" if e.reason else "")
        best = _fmt(e.best_level) if e.best_level is not None else ""
        out.append(f"| {e.factor} | {e.stratum} | {e.n} | {f} | {p} | {eta} | {verdict} | {best} | {means} |")
    return out


def _p_text(p: float | None, bare: bool = False) -> str:
    if p is None:
        return ""
    text = "<0.001" if p < 0.001 else f"={p:.2g}"
    return text.lstrip("=") if bare else "p" + text


def _eta_size(eta: float) -> str:
    return next((name for cut, name in ETA_SIZES if eta >= cut), "negligible")


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


# ----------------------------------------------------------------------------- console


def console_table(rows: list[dict[str, Any]], limit: int = 20, grid_dir: Path | str | None = None) -> str:
    """The CLI's closing table: top cells by mean Dice, counts by status, where the files are."""
    ranked = sorted(rows, key=lambda r: (r.get("mean_dice") is None, -(r.get("mean_dice") or 0.0), r["id"]))
    # Only the labels of the cells shown: an area-only top list needs no E0-E4 columns.
    shown = ranked[:limit]
    dice_cols = [c for c in columns_of(rows) if c.startswith("dice_") and any(r.get(c) is not None for r in shown)]
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
    if len(ranked) > limit:
        lines.append(f"... {len(ranked) - limit} more cells in summary.csv")
    counts = count_statuses(rows)
    lines.append(f"cells: {len(rows)} total, " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    for r in best_cells(rows):
        lines.append(f"best {stratum_of(r)}: {r['label']} ({r['id']}) mean Dice {r['mean_dice']:.4f}")
    if grid_dir is not None:
        g = Path(grid_dir)
        lines.append(f"files: {g / 'summary.md'}  {g / 'summary.csv'}  {g / 'summary.json'}")
        lines.append(f"       {g / 'plots'}/  {g / 'best'}/<inputs>-<prediction>/")
    return "\n".join(lines)


def _num(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"


# ----------------------------------------------------------------------------- Prefect artifacts


def artifact_key(text: str) -> str:
    """A valid Prefect artifact key (lowercase letters, digits, dashes) from any name."""
    key = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return key or "grid"


def publish_artifacts(summary: Summary, key_prefix: str) -> dict[str, UUID]:
    """Create the cells table and the summary markdown artifacts; returns their ids by key.

    ``_sync=True`` makes Prefect's dual sync/async helpers run synchronously even when
    called from an async flow, where they would otherwise return an un-awaited coroutine.
    """
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    prefix = artifact_key(key_prefix)
    n = len(summary.rows)
    table = [{k: _table_value(r.get(k)) for k in summary.columns} for r in summary.rows]
    return {
        f"{prefix}-cells": create_table_artifact(
            table=table, key=f"{prefix}-cells", description=f"{n} cells of grid {summary.title}", _sync=True
        ),
        f"{prefix}-summary": create_markdown_artifact(
            markdown=summary.markdown, key=f"{prefix}-summary", description=f"summary of grid {summary.title}",
            _sync=True,
        ),
    }


def _table_value(v: Any) -> Any:
    if isinstance(v, float):
        return round(v, 6)
    return json.dumps(v) if isinstance(v, (list, dict, tuple)) else v


def start_progress(total: int, key: str) -> UUID:
    """A progress artifact at 0% (100% when there is nothing to run)."""
    from prefect.artifacts import create_progress_artifact

    return create_progress_artifact(
        progress=0.0 if total else 100.0, key=artifact_key(key), description=f"0/{total} finished", _sync=True
    )


def update_progress(artifact_id: UUID, done: int, total: int) -> None:
    """Move the progress artifact to done/total."""
    from prefect.artifacts import update_progress_artifact

    pct = 100.0 * done / total if total else 100.0
    update_progress_artifact(
        artifact_id=artifact_id, progress=min(pct, 100.0), description=f"{done}/{total} finished", _sync=True
    )
