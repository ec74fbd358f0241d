"""Expand a grid spec into cells; where each cell lives on disk.

(Owned by the spec/cells stage; the dataclass below is the shared contract.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autolabel.options import CellOptions, Plan


@dataclass(frozen=True)
class Cell:
    """One training run of the grid: its content-derived id and what it trains."""

    id: str  # content hash of options + plan; safe as a directory name and S3 key
    label: str  # readable, e.g. resnet18-lr0.0025-g0.9-bce0.67-b4-full-area
    options: CellOptions
    plan: Plan
    hyper: dict[str, Any] = field(default_factory=dict)  # this cell's value of each hyper factor


def cell_dir(grid_dir: Path, cell: Cell | str) -> Path:
    """``<grid_dir>/cells/<cell-id>/``"""
    return Path(grid_dir) / "cells" / (cell if isinstance(cell, str) else cell.id)
