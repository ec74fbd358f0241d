"""The summary stage's files: summary.csv/.json/.md, plots/ and best/ under the grid's directory.

The flow calls, in order::

    rows = rows.collect_rows(grid_dir, cells, outcomes, costs)   # flows/summary/rows.py
    result = summary.write_summary(grid_dir, cells, rows, cap_usd=..., spent_usd=...)
    artifacts.publish_artifacts(result, key_prefix=artifacts.artifact_key(grid_dir.name))
    print(report.console_table(rows, grid_dir=grid_dir))

``write_summary`` writes, under the grid's directory:

- ``summary.csv`` / ``summary.json``: one row per cell (id, label, every hyperparameter,
  status, mean and per-label validation Dice, epochs, duration, cost); the JSON adds
  counts, spend, the best cells and every test (flows/summary/stats.py);
- ``summary.md``: the same, for people (flows/summary/report.py; it is also the markdown artifact);
- ``plots/dice_by_<factor>.png``: validation Dice by level, one panel per inputs x prediction;
- ``best/<inputs>-<prediction>/``: the winning cell's ``options.json`` and ``plan.json``, and
  ``predictions.png`` (a few validation subjects as its model.pt labels them).

Benchmark (1800 cells): ``.venv/bin/python benchmarks/summarize.py``.
No Prefect here; torch only inside plots.plot_predictions.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from autolabel import celldir
from autolabel.celldir import METRICS, MODEL, write_json_atomic, write_text_atomic
from flows.spec.cells import Cell, cell_dir
from flows.spec.parse import Halving
from flows.summary.halving import summarize_halving
from flows.summary.plots import PREDICTIONS, plot_predictions, write_plots
from flows.summary.report import BestCell, Summary, predict_commands, render_markdown
from flows.summary.rows import (
    columns_of,
    count_statuses,
    factor_columns,
    safe_name,
    stratum_of,
    top_cells,
)
from flows.summary.stats import ALPHA, effects

BEST_JSON = "best.json"  # what makes a folder under best/ one of the summary's own


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
    halving: Halving | None = None,
) -> Summary:
    """Write summary.csv/.json/.md, plots/ and best/ under ``grid_dir``; return what was found.

    ``spent_usd`` is the ledger's total (failed attempts included); None sums the rows' costs.
    ``halving``: the grid's rule, for a halved grid: the rows gain ``cut`` and ``audit``, and the
    effect tests run on the audit cells at the end and on all cells at the first cut only
    (flows/summary/halving.py says why).
    """
    grid_dir = Path(grid_dir)
    grid_dir.mkdir(parents=True, exist_ok=True)
    halved = None
    if halving is not None:
        rows, halved = summarize_halving(grid_dir, cells, rows, halving, alpha)
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
        best=write_best(grid_dir, cells, rows, pictures=plots),
        effects=halved.audit_effects if halved else effects(rows, alpha),
        files=files,
        plots=write_plots(grid_dir, rows) if plots else [],
        halving=halved,
    )
    summary.markdown = render_markdown(summary, alpha)
    write_text_atomic(grid_dir / "summary.csv", _csv_text(rows, cols))
    write_json_atomic(grid_dir / "summary.json", summary.model_dump(mode="json"))
    write_text_atomic(grid_dir / "summary.md", summary.markdown)
    return summary


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


# ----------------------------------------------------------------------------- best/


def write_best(grid_dir: Path, cells: list[Cell], rows: list[dict[str, Any]], pictures: bool = True) -> list[BestCell]:
    """best/<stratum>/ for each stratum's winner, each built aside and swapped in whole; a stale
    stratum's folder (one of ours: it holds best.json) goes. Nothing else in best/ is touched: a
    folder a user keeps there (a final model, say) stays.

    With ``pictures``, each winner's ``predictions.png`` too (from its model.pt, when it has one).
    """
    by_id = {c.id: c for c in cells}
    final = Path(grid_dir) / "best"
    for leftover in [*Path(grid_dir).glob(".best.*"), *final.glob(".stage.*")]:  # a summary killed mid-swap
        shutil.rmtree(leftover, ignore_errors=True)
    final.mkdir(parents=True, exist_ok=True)
    out = []
    for top in top_cells(rows, 3).values():
        r = top[0]
        cell, name = by_id[r["id"]], safe_name(stratum_of(r))
        staging = Path(tempfile.mkdtemp(dir=final, prefix=f".stage.{name}."))
        os.chmod(staging, 0o777 & ~celldir.UMASK)  # as a plain mkdir makes it, not mkdtemp's 0700
        best = fill_best(staging, grid_dir, cell, r, top, rows, final / name, pictures)
        swap_in(staging, final / name)
        out.append(best)
    winners = {safe_name(b.stratum) for b in out}
    for old in final.iterdir():
        if old.is_dir() and old.name not in winners and (old / BEST_JSON).is_file():
            shutil.rmtree(old, ignore_errors=True)  # a stratum this grid no longer has a winner in
    return out


def fill_best(dest: Path, grid_dir: Path, cell: Cell, r: dict[str, Any], top: list[dict[str, Any]],
              rows: list[dict[str, Any]], final: Path, pictures: bool) -> BestCell:
    """One winner's folder (at ``dest``, to become ``final``): its inputs, picture, best.json, README."""
    _copy_inputs(cell_dir(grid_dir, cell), dest, cell)
    drawn, note = _draw_predictions(dest, cell_dir(grid_dir, cell), f"{stratum_of(r)} best cell {r['label']}") \
        if pictures else (False, "")
    best = BestCell(
        stratum=stratum_of(r),
        id=r["id"],
        label=r["label"],
        mean_dice=r["mean_dice"],
        dice={k[5:]: v for k, v in r.items() if k.startswith("dice_") and v is not None},
        best_val_dice_loss=r["best_val_dice_loss"],
        hyper={k: r[k] for k in factor_columns(rows)},
        path=str(final),
        predictions=str(final / PREDICTIONS) if drawn else None,
        predictions_note=note,
        top=[t["id"] for t in top],
    )
    write_json_atomic(dest / BEST_JSON, best.model_dump(mode="json"))
    write_text_atomic(dest / "README.md", _best_readme(best, grid_dir))
    return best


def swap_in(staging: Path, final: Path) -> None:
    """Put ``staging`` where ``final`` is: readers see the old folder or the new one, never a mix."""
    old = final.with_name(f".stage.{final.name}.old")
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _draw_predictions(dest: Path, cell: Path, title: str) -> tuple[bool, str]:
    """best/<stratum>/predictions.png; (False, why) when it cannot be drawn. Never fails the summary:
    the numbers matter more than the picture."""
    if not (cell / MODEL).is_file():
        return False, f"no {MODEL} in {cell}" + (" (it stayed in S3: download_models is off)" if
                                                 (cell / METRICS).is_file() else "")
    try:
        plot_predictions(dest / PREDICTIONS, cell, title)
    except Exception as e:  # noqa: BLE001 - an unreadable model or a dataset gone from the cache
        return False, f"predictions not drawn: {type(e).__name__}: {e}".splitlines()[0]
    return True, ""


def _copy_inputs(src: Path, dest: Path, cell: Cell) -> None:
    # The cell's own files are what it trained with; the models are the fallback.
    for name, model in (("options.json", cell.options), ("plan.json", cell.plan)):
        if (src / name).is_file():
            shutil.copyfile(src / name, dest / name)
        else:
            write_json_atomic(dest / name, model.model_dump(mode="json"))


def _best_readme(b: BestCell, grid_dir: Path) -> str:
    per_label = ", ".join(f"{k} {v:.4f}" for k, v in b.dice.items())
    return (
        f"# Best cell for {b.stratum}\n\n"
        f"Cell `{b.id}` ({b.label}): mean validation Dice {b.mean_dice:.4f} ({per_label}).\n\n"
        "`options.json` and `plan.json` here are that cell's, ready for the final training.\n"
        "This folder is rebuilt by every summary: copy it elsewhere before training in it, e.g.\n\n"
        f"    cp -r best/{b.stratum} final-{b.stratum} && python -m autolabel.train final-{b.stratum}\n\n"
        "To label a lab's own FreeSurfer subjects with this cell's model (its model.pt stays in the cell's\n"
        "folder; this folder's best.json names it), or with the stratum's top cells averaged:\n\n"
        + "".join(f"    {c}\n" for c in predict_commands(b, grid_dir))
    )
