"""The summary's pictures: validation Dice by level of each factor, one panel per stratum.

    written = write_plots(grid_dir, rows)     # grid_dir/plots/dice_by_<factor>.png

matplotlib is imported inside the drawing function (its object-oriented API with the Agg
canvas, no pyplot state), so importing this module costs nothing. No Prefect, no torch.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from flows.rows import STRATA, fmt_level, level_key, safe_name, scored, sorted_levels, stratum_of, varying_factors


def plot_name(factor: str) -> str:
    """The file name of a factor's plot under plots/ (the report links it)."""
    return f"dice_by_{safe_name(factor)}.png"


def write_plots(grid_dir: Path, rows: list[dict[str, Any]]) -> list[str]:
    """One PNG per varying factor: Dice by level, a panel per stratum of the other strata keys."""
    out_dir = Path(grid_dir) / "plots"
    shutil.rmtree(out_dir, ignore_errors=True)  # a factor that no longer varies leaves no plot
    out_dir.mkdir(parents=True)
    cells = scored(rows)
    if not cells:
        return []
    written = []
    for factor in varying_factors(rows):
        blocks = tuple(k for k in STRATA if k != factor)
        path = out_dir / plot_name(factor)
        plot_factor(path, factor, sorted_levels(rows, factor), cells, blocks)
        written.append(str(path))
    return written


def plot_factor(path: Path, factor: str, levels: list[Any], rows: list[dict[str, Any]], blocks: tuple) -> None:
    """Box plot plus jittered points of mean Dice per level, one panel per value of ``blocks``."""
    from matplotlib.figure import Figure

    panels = sorted({stratum_of(r, blocks) for r in rows})
    ncols = min(len(panels), 4)
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(3.2 * ncols + 0.6, 3.0 * nrows + 0.6), layout="constrained")
    # Own y-range per panel: strata differ far more than levels, and the levels are the point.
    axes = fig.subplots(nrows, ncols, squeeze=False)
    keys = [level_key(v) for v in levels]
    rng = np.random.default_rng(0)  # the same jitter every time: plots do not churn between reruns
    for ax, panel in zip(axes.flat, panels):
        sub = [r for r in rows if stratum_of(r, blocks) == panel]
        data = [np.array([r["mean_dice"] for r in sub if level_key(r[factor]) == k]) for k in keys]
        pos = [i + 1 for i, d in enumerate(data) if len(d)]
        ax.boxplot([d for d in data if len(d)], positions=pos, widths=0.6, showfliers=False)
        for i, d in enumerate(data):
            ax.scatter(i + 1 + rng.uniform(-0.18, 0.18, len(d)), d, s=6, alpha=0.5, color="tab:blue")
        ax.set_xticks(range(1, len(levels) + 1), [fmt_level(v) for v in levels], rotation=30 if len(levels) > 4 else 0)
        ax.set_title(f"{panel or 'all'} (n={len(sub)})", fontsize=9)
        ax.set_xlabel(factor)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("validation Dice (mean)")
    fig.suptitle(f"Validation Dice by {factor}" + (f", per {' x '.join(blocks)}" if blocks else ""))
    fig.savefig(path, dpi=90)
