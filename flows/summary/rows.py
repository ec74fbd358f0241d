"""Summary rows: one row per cell from its metrics.json, and the small rules every later stage shares.

    rows = collect_rows(grid_dir, cells, outcomes, costs)   # reads every cells/<id>/metrics.json

A row holds the cell's id and label, every hyperparameter, its status, mean and per-label
validation Dice (``dice_<label>``), epochs, duration and cost. The statistics (flows/summary/stats.py),
the report (flows/summary/report.py), the plots (flows/summary/plots.py) and the files (flows/summary/files.py) read
rows only through the helpers here, so they agree on what a level, a stratum and a winner are.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

from autolabel.celldir import read_metrics
from autolabel.options import CellMetrics
from flows.spec.cells import STRATA, Cell, CellOutcome, cell_dir

# Columns every row has besides the hyperparameters and the per-label dice_<label> columns.
HEAD = ("id", "label")
TAIL = ("status", "mean_dice")
METRIC_TAIL = ("best_val_dice_loss", "epochs", "duration_s", "cost_usd", "message")
HALVING_COLUMNS = ("cut", "audit")  # a halved grid's: the cut each cell reached, and whether it is an audit cell
STATUS_ORDER = ("complete", "cut", "diverged", "failed", "skipped", "stopped", "paused", "pending")


def collect_rows(
    grid_dir: Path,
    cells: list[Cell],
    outcomes: dict[str, CellOutcome] | None = None,
    costs: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """One row per cell, in the order given: its hyperparameters, status and metrics.

    ``outcomes`` is what the flow knows about a cell (skipped by the cost cap, failed, stopped);
    a complete ``metrics.json`` always wins, since it is written last.
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


def _status(m: CellMetrics | str | None, outcome: CellOutcome | None) -> tuple[str, str]:
    if isinstance(m, CellMetrics) and m.status == "complete":
        return "complete", m.message
    if outcome is not None:
        return outcome.status, outcome.reason or (m.message if isinstance(m, CellMetrics) else "")
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
    fixed = set(HEAD + TAIL + METRIC_TAIL + HALVING_COLUMNS)
    return [c for c in columns_of(rows) if c not in fixed and not c.startswith("dice_")]


def varying_factors(rows: list[dict[str, Any]]) -> list[str]:
    """The hyperparameter columns with at least two levels among all the rows."""
    return [f for f in factor_columns(rows) if len({level_key(r[f]) for r in rows}) > 1]


def scored(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The complete cells with a Dice: the only ones any statistic or winner uses."""
    return [r for r in rows if r.get("status") == "complete" and r.get("mean_dice") is not None]


def stratum_of(row: dict[str, Any], keys: tuple[str, ...] = STRATA) -> str:
    return "-".join(str(row.get(k)) for k in keys)


def level_key(v: Any) -> Any:
    """A hashable stand-in for a level: lists/dicts (e.g. an image_size factor) by their JSON text."""
    return json.dumps(v, sort_keys=True) if isinstance(v, (list, dict, tuple)) else v


def sorted_levels(rows: list[dict[str, Any]], factor: str) -> list[Any]:
    """The factor's distinct levels among the rows: numeric order for numbers, else text order."""
    values = list({level_key(r[factor]): r[factor] for r in rows}.values())
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return sorted(values)
    return sorted(values, key=lambda v: str(v))


def fmt_level(v: Any) -> str:
    """A level as people read it (0.0025, not 0.0025000000000000001)."""
    return f"{v:g}" if isinstance(v, float) else str(v)


def safe_name(text: str) -> str:
    """A file-name-safe version of a factor or stratum name."""
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text).strip("_") or "factor"


def count_statuses(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Cells per status, in the order complete, diverged, failed, skipped, pending, others."""
    c = Counter(r["status"] for r in rows)
    rank = {s: i for i, s in enumerate(STATUS_ORDER)}
    return {s: c[s] for s in sorted(c, key=lambda s: (rank.get(s, len(rank)), s))}


def ranked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows by mean Dice, best first; cells without a Dice last, then by id (the console and Prefect tables)."""
    return sorted(rows, key=lambda r: (r.get("mean_dice") is None, -(r.get("mean_dice") or 0.0), r["id"]))


def dice_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The per-label Dice columns (dice_V1, ...) that hold a value in some row."""
    return [c for c in columns_of(rows) if c.startswith("dice_") and any(r.get(c) is not None for r in rows)]


def best_cells(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per inputs x prediction: highest mean_dice; ties -> lower best_val_dice_loss, then id."""
    return [top[0] for top in top_cells(rows, 1).values()]


def top_cells(rows: list[dict[str, Any]], n: int) -> dict[str, list[dict[str, Any]]]:
    """Per inputs x prediction (in stratum order): its ``n`` best complete cells, best first, ranked
    as :func:`best_cells` ranks them (what an ensemble of a stratum's top cells is made of)."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in scored(rows):
        by.setdefault(stratum_of(r), []).append(r)
    return {s: sorted(by[s], key=_rank_key)[:n] for s in sorted(by)}


def _rank_key(r: dict[str, Any]) -> tuple[float, float, str]:
    loss = r.get("best_val_dice_loss")
    return (-r["mean_dice"], math.inf if loss is None else loss, r["id"])
