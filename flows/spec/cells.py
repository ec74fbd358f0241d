"""Expand a grid spec into cells; where each cell lives on disk; what became of a cell (CellOutcome).

    python -m flows.grid grid-search/demo.yaml --dry-run --json   # every cell: id, label, options, plan

A cell's id is a hash of what it trains (options with their defaults spelled out, and
its plan), so it names the same directory whatever the spec around it: adding a level
to a hyper list adds cells and renames none. Cells come in the original tooling's
order (the first factor varies fastest), so cell ``n`` is its ``grid%05d`` cell.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from autolabel import celldir
from autolabel.celldir import write_json_atomic
from autolabel.options import CellOptions, Plan
from flows.spec.parse import GridSpec
from flows.spec.values import split_values

ID_HEX = 16  # 64 bits of sha256: a collision among a million cells has odds ~1e-8

# Label parts in a fixed order (the published grid's), then any other factor in spec order.
LABEL_ORDER = ("base_model", "lr", "gamma", "bce_weight", "batch_size", "inputs", "prediction")
LABEL_PREFIX = {"lr": "lr", "gamma": "g", "bce_weight": "bce", "batch_size": "b", "num_epochs": "e", "until": "u"}
BARE = ("base_model", "inputs", "prediction", "device")  # values that read alone: resnet18, full, area
SHORT_DIGITS = 6  # significant digits of a number in a label (what ``:g`` prints), unless levels need more
# The two factors that change the task itself: Dice is compared only within one of their
# combinations (a "stratum"), never across, because anat-vs-full and area-vs-ring differ
# far more than any training hyperparameter (the summary's tests, the halving's cuts).
STRATA = ("inputs", "prediction")


@dataclass(frozen=True)
class Cell:
    """One training run of the grid: its content-derived id and what it trains."""

    id: str  # content hash of options + plan; safe as a directory name and S3 key
    label: str  # readable, e.g. resnet18-lr0.0025-g0.9-bce0.67-b4-full-area
    options: CellOptions
    plan: Plan
    hyper: dict[str, Any] = field(default_factory=dict)  # this cell's value of each hyper factor


# What became of a cell: its metrics.json's status (complete, diverged, failed), or what the flow
# knows of a cell without one: skipped by the cost cap, stopped (a rerun resumes it), pending;
# with halving, paused at a cut until its stratum is decided, or cut there by the rule (by design).
Status = Literal["complete", "diverged", "failed", "skipped", "stopped", "pending", "paused", "cut"]


@dataclass(frozen=True)
class CellOutcome:
    """One cell after an attempt (or without one): its status, why, and the trainer's exit code."""

    status: Status
    reason: str = ""  # for people: the metrics' message, or what the runner or the cap said
    exit_code: int | None = None  # the pack's trainer exit code, when it ran


def stratum_key(cell: Cell) -> str:
    """The cell's inputs x prediction stratum, e.g. ``full-area`` (as the summary's rows name it)."""
    return "-".join(str(cell.hyper[k] if k in cell.hyper else getattr(cell.options, k)) for k in STRATA)


def cell_dir(grid_dir: Path, cell: Cell | str) -> Path:
    """``<grid_dir>/cells/<cell-id>/``"""
    return Path(grid_dir) / "cells" / (cell if isinstance(cell, str) else cell.id)


# ----------------------------------------------------------------------------- expansion


def expand(spec: GridSpec) -> list[Cell]:
    """Every cell of the spec, first factor fastest; ids from content, labels from factors.

    Options and plans repeat across cells (24 option sets and 75 plans make the 1800
    published cells), so each is validated and serialized once.
    """
    keys = list(spec.hyper)
    levels = [range(len(spec.hyper[k])) for k in reversed(keys)]
    option_keys = [k for k in keys if k in CellOptions.model_fields]
    plan_keys = [k for k in keys if k not in CellOptions.model_fields]
    options_memo: dict[tuple, tuple[CellOptions, str]] = {}
    plan_memo: dict[tuple, tuple[Plan, str]] = {}
    cells = []
    for picks in itertools.product(*levels):  # the last of the reversed keys varies fastest
        index = dict(zip(reversed(keys), picks))
        values = {**spec.static, **{k: spec.hyper[k][i] for k, i in index.items()}}
        options_dict, rounds = split_values(values, spec.plan, spec.plan_scale)
        okey = tuple(index[k] for k in option_keys)
        if okey not in options_memo:
            options_memo[okey] = serialize(CellOptions.model_validate(options_dict))
        pkey = tuple(index[k] for k in plan_keys)
        if pkey not in plan_memo:
            plan_memo[pkey] = serialize(Plan.model_validate(rounds))
        (options, options_json), (plan, plan_json) = options_memo[okey], plan_memo[pkey]
        cells.append(
            Cell(
                id=hash_id(options_json, plan_json),
                label=make_label(spec, index),
                options=options,
                plan=plan,
                hyper={k: spec.hyper[k][index[k]] for k in keys},
            )
        )
    return cells


def serialize(model: Any) -> tuple[Any, str]:
    """(model, canonical JSON): defaults included, keys sorted, no spaces.

    Defaults are spelled out so that writing a default explicitly in the spec gives
    the same id, and so that a changed default in the trainer gives new ids rather
    than silently reusing results trained under the old meaning.
    """
    return model, json.dumps(model.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def hash_id(options_json: str, plan_json: str) -> str:
    """16 hex digits of sha256 over ``{"options":...,"plan":...}`` (canonical JSON)."""
    canonical = '{"options":' + options_json + ',"plan":' + plan_json + "}"
    return hashlib.sha256(canonical.encode()).hexdigest()[:ID_HEX]


def make_label(spec: GridSpec, index: dict[str, int]) -> str:
    """``resnet18-lr0.0025-g0.9-bce0.67-b4-full-area`` from the factors with several levels.

    Each part is distinct among its factor's levels and holds no ``-``, so two cells
    never share a label.
    """
    varying = [k for k in LABEL_ORDER if k in spec.factors] + [k for k in spec.factors if k not in LABEL_ORDER]
    parts = [factor_parts(k, spec.hyper[k])[index[k]] for k in varying]
    return "-".join(parts) or spec.name


def factor_parts(key: str, levels: list[Any]) -> list[str]:
    """Every level's label part; scalar levels are cached (1800 cells share 22 levels)."""
    if all(isinstance(v, (bool, int, float, str)) for v in levels):
        return list(_scalar_parts(key, tuple(levels)))
    return distinct_parts(key, levels)


@lru_cache(maxsize=256)
def _scalar_parts(key: str, levels: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(distinct_parts(key, list(levels)))


def distinct_parts(key: str, levels: list[Any]) -> list[str]:
    """Label parts that tell levels apart: ``:g``'s 6 digits, more where two levels agree on those.

    0.0037500001 and 0.00375 both print as 0.00375 with 6 digits; the factor then gets as
    many digits as separate them, and as a last resort each level's number.
    """
    for digits in (*range(SHORT_DIGITS, 17), None):  # 17 digits print 0.3 as 0.29999999999999999: repr then
        parts = [label_part(key, v, i, digits) for i, v in enumerate(levels)]
        if len(set(parts)) == len(parts):
            return parts
    prefix = LABEL_PREFIX.get(key, key)  # e.g. strings that differ only in characters a label drops
    return [f"{prefix or key}{i}" for i in range(len(levels))]


def label_part(key: str, value: Any, level: int, digits: int | None = SHORT_DIGITS) -> str:
    """One factor's part of a label; a structured value (a dataset, a partition) shows its level number.

    Numbers get ``digits`` significant digits (None: the shortest text that reads back exactly).
    """
    prefix = LABEL_PREFIX.get(key, "" if key in BARE else key)
    if isinstance(value, bool):
        text = f"{prefix}{int(value)}"
    elif isinstance(value, (int, float)):
        text = f"{prefix}{value:.{digits}g}" if digits else f"{prefix}{value!r}"
    elif isinstance(value, str):
        text = f"{prefix}{value}"
    else:
        text = f"{prefix or key}{level}"
    return re.sub(r"[^A-Za-z0-9._]+", "_", text)


# ----------------------------------------------------------------------------- on disk


def grid_dir(spec: GridSpec, spec_path: str | Path, out: str | Path | None = None) -> Path:
    """Where the grid's cells and summaries go: ``out``, else ``<spec folder>/<name>/``."""
    return Path(out) if out else Path(spec_path).parent / spec.name


# A grid's folder says so: written before its first cell. A run refuses to write into a folder that
# holds anything but a grid's own files (it would overwrite a user's plots/, best/, summary.md).
GRID_MARKER = ".autolabel-grid"
OWN_FILES = (".lock",)  # what a folder may hold and still count as empty (the run's own lock)


def is_grid_folder(folder: Path) -> bool:
    """Whether ``folder`` is absent, empty, or a grid's folder (its marker, or the cells/ and
    ledger.jsonl of a grid written before the marker existed)."""
    folder = Path(folder)
    if not folder.is_dir():
        return not folder.exists()
    if (folder / GRID_MARKER).is_file() or (folder / "cells").is_dir() or (folder / "ledger.jsonl").is_file():
        return True
    return all(p.name in OWN_FILES for p in folder.iterdir())


def mark_grid_folder(folder: Path, name: str) -> None:
    """Say that ``folder`` is grid ``name``'s (once, before its first cell is written)."""
    if not (Path(folder) / GRID_MARKER).is_file():
        write_json_atomic(Path(folder) / GRID_MARKER, {"grid": name, "written_by": "python -m flows.grid"})


def cell_record(cell: Cell) -> dict[str, Any]:
    """A cell as JSON data: id, label, hyper values, options and plan."""
    return {
        "id": cell.id,
        "label": cell.label,
        "hyper": cell.hyper,
        "options": cell.options.model_dump(mode="json"),
        "plan": cell.plan.model_dump(mode="json"),
    }


def write_cell(grid_dir: Path, cell: Cell) -> Path:
    """Write the cell's options.json and plan.json (atomically, and only if they differ); its dir."""
    d = cell_dir(grid_dir, cell)
    for name, model in ((celldir.OPTIONS, cell.options), (celldir.PLAN, cell.plan)):
        obj = model.model_dump(mode="json")
        if read_json_or_none(d / name) != obj:
            write_json_atomic(d / name, obj)
    return d


def read_json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def complete_ids(grid_dir: Path) -> set[str]:
    """Ids of the complete cells under ``grid_dir/cells/``."""
    return celldir.complete_ids(Path(grid_dir) / "cells")
