"""The summary's pictures: Dice by level of each factor, learning curves, a best cell's predictions.

    written = write_plots(grid_dir, rows)     # plots/dice_by_<factor>.png, plots/learning_curves.png
    plot_predictions(best / "predictions.png", cell_dir, title)   # what a trained cell draws

matplotlib (its object-oriented API with the Agg canvas, no pyplot state) and, for the
predictions, torch and the trainer's model are imported inside the drawing functions, so
importing this module costs nothing. No Prefect.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from autolabel.celldir import read_history as read_history_rows
from autolabel.celldir import write_atomic
from flows.spec.cells import cell_dir
from flows.summary.rows import (
    STRATA,
    fmt_level,
    level_key,
    safe_name,
    scored,
    sorted_levels,
    stratum_of,
    varying_factors,
)

LEARNING_CURVES = "learning_curves.png"
# history.csv columns drawn, with their axis labels (the trainer's names, autolabel/train.py).
CURVES = (("train_loss", "training loss"), ("val_loss", "validation loss"), ("val_mean_dice", "validation Dice (mean)"))


def plot_name(factor: str) -> str:
    """The file name of a factor's plot under plots/ (the report links it)."""
    return f"dice_by_{safe_name(factor)}.png"


def grid_of_panels(fig: Any, rows: int, cols: int, top: float, bottom: float, hgap: float, left: float = 0.75,
                   wgap: float = 0.75, right: float = 0.3) -> Any:
    """``fig``'s rows x cols axes with margins and gaps fixed in inches, room for the texts these
    plots draw (tick labels, an axis label, a panel title; the figure's title above). Constrained
    layout would measure every text to find them: about half the cost of the picture, 0.6 against
    0.27 s for learning curves of two strata (2-core machine, 2026-12-06)."""
    w, h = fig.get_size_inches()
    width, height = (w - left - right - (cols - 1) * wgap) / cols, (h - top - bottom - (rows - 1) * hgap) / rows
    fig.subplots_adjust(left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h,
                        wspace=wgap / width, hspace=hgap / height)
    return fig.subplots(rows, cols, squeeze=False)


def save(fig: Any, path: Path, dpi: int) -> None:
    """A figure as PNG, atomically: a full disk leaves the old picture or none, never half a file."""
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


def ours(path: Path) -> bool:
    """Whether a file under plots/ is one this module writes (a user's own files there are left alone)."""
    return path.name == LEARNING_CURVES or (path.name.startswith("dice_by_") and path.suffix == ".png")


def write_plots(grid_dir: Path, rows: list[dict[str, Any]]) -> list[str]:
    """One PNG per varying factor: Dice by level, a panel per stratum of the other strata keys."""
    out_dir = Path(grid_dir) / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = draw_plots(out_dir, Path(grid_dir), rows)
    for old in out_dir.iterdir():  # a factor that no longer varies leaves no plot; nothing else is touched
        if ours(old) and str(old) not in written:
            old.unlink(missing_ok=True)
    return written


def draw_plots(out_dir: Path, grid_dir: Path, rows: list[dict[str, Any]]) -> list[str]:
    """The learning curves and a plot per varying factor into ``out_dir``; the paths written."""
    written = []
    curves = out_dir / LEARNING_CURVES
    if plot_learning_curves(curves, grid_dir, rows):
        written.append(str(curves))
    cells = scored(rows)
    if not cells:
        return written
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
    rotate = len(levels) > 4
    fig = Figure(figsize=(3.2 * ncols + 0.6, 3.0 * nrows + 0.6))
    # Own y-range per panel: strata differ far more than levels, and the levels are the point.
    axes = grid_of_panels(fig, nrows, ncols, top=0.6, bottom=0.75 if rotate else 0.5, hgap=0.9 if rotate else 0.7)
    keys = [level_key(v) for v in levels]
    rng = np.random.default_rng(0)  # the same jitter every time: plots do not churn between reruns
    for ax, panel in zip(axes.flat, panels):
        sub = [r for r in rows if stratum_of(r, blocks) == panel]
        data = [np.array([r["mean_dice"] for r in sub if level_key(r[factor]) == k]) for k in keys]
        pos = [i + 1 for i, d in enumerate(data) if len(d)]
        ax.boxplot([d for d in data if len(d)], positions=pos, widths=0.6, showfliers=False)
        for i, d in enumerate(data):
            ax.scatter(i + 1 + rng.uniform(-0.18, 0.18, len(d)), d, s=6, alpha=0.5, color="tab:blue")
        ax.set_xticks(range(1, len(levels) + 1), [fmt_level(v) for v in levels], rotation=30 if rotate else 0)
        ax.set_title(f"{panel or 'all'} (n={len(sub)})", fontsize=9)
        ax.set_xlabel(factor)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("validation Dice (mean)")
    fig.suptitle(f"Validation Dice by {factor}" + (f", per {' x '.join(blocks)}" if blocks else ""))
    save(fig, path, dpi=90)


def read_history(cell: Path) -> list[dict[str, np.ndarray]] | None:
    """The drawn columns of a cell's history.csv, one series per repeat (a fresh init), epochs in file
    order. None if the file is absent or unreadable (a cell that never finished an epoch): no curve.
    """
    records = read_history_rows(cell)
    if records is None:
        return None
    try:
        repeats = list(dict.fromkeys(r.get("repeat", "0") for r in records))
        out = [
            {col: np.array([float(r[col]) for r in records if r.get("repeat", "0") == rep]) for col, _ in CURVES}
            for rep in repeats
        ]
    except (KeyError, ValueError, TypeError):
        return None
    return out or None


def plot_learning_curves(path: Path, grid_dir: Path, rows: list[dict[str, Any]]) -> bool:
    """Training and validation loss and validation Dice per epoch, one line per cell, a row per stratum.

    Returns False (and draws nothing) when no cell has a history.csv yet.
    """
    from matplotlib.figure import Figure

    histories = [(r, read_history(cell_dir(grid_dir, r["id"]))) for r in rows]
    histories = [(r, h) for r, h in histories if h is not None]
    if not histories:
        return False
    panels = sorted({stratum_of(r) for r, _ in histories})
    fig = Figure(figsize=(11, 2.6 * len(panels) + 0.6))
    axes = grid_of_panels(fig, len(panels), len(CURVES), top=0.75, bottom=0.5, hgap=0.7)
    for row_axes, panel in zip(axes, panels):
        mine = [(r, h) for r, h in histories if stratum_of(r) == panel]
        # Failed cells in red, so a curve that ends early is explained at a glance.
        series = [(r["status"] == "complete", one) for r, h in mine for one in h]
        alpha = max(0.15, min(0.8, 8 / len(series)))
        for ax, (col, name) in zip(row_axes, CURVES):
            for complete, color in ((True, "tab:blue"), (False, "tab:red")):
                x, y = _joined([h[col] for ok, h in series if ok == complete])
                # One path per colour, cells separated by NaN: 3600 curves draw in a blink.
                ax.plot(x, y, color=color, linewidth=0.8, alpha=alpha)
            ax.set_title(f"{panel}: {name} (cells={len(mine)})", fontsize=9)
            ax.set_xlabel("epoch (all rounds)")
            if col.endswith("loss"):
                # A first epoch's loss can be hundreds of times the rest: on a log scale it does not
                # flatten the curves that matter (losses are positive: BCE and Dice loss >= 0).
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
    fig.suptitle("Learning curves per cell (blue: complete, red: not complete)")
    save(fig, path, dpi=80)
    return True


def _joined(curves: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Epoch numbers and values of many curves in one pair of arrays, NaN between curves."""
    if not curves:
        return np.array([]), np.array([])
    x = np.concatenate([np.append(np.arange(1, len(c) + 1, dtype=float), np.nan) for c in curves])
    y = np.concatenate([np.append(c, np.nan) for c in curves])
    return x, y


# ----------------------------------------------------------------------------- a best cell's predictions

PREDICTIONS = "predictions.png"
SHOWN_SUBJECTS = 3  # validation subjects drawn per best cell: enough to see, fast to predict on a CPU
LABEL_COLOURS = ("tab:red", "tab:green", "tab:blue", "tab:orange", "tab:purple")


def predict_validation(cell: Path, subjects: int = SHOWN_SUBJECTS) -> dict[str, Any]:
    """The trained model of ``cell`` (its model.pt) on its first validation subjects, on the CPU.

    Returns ``subjects`` (ids), ``background`` [N, H, W] (curvature, else the first input
    channel, raw units) and its ``channel`` name, ``truth`` and ``predicted`` 0/1 [N, L, H, W],
    ``labels`` and ``dice`` [N, L]. The cohort and split are the cell's own (options.json),
    standardised with the training statistics stored in model.pt.
    """
    import torch  # only here: importing flows/ stays light

    from autolabel.celldir import MODEL, OPTIONS
    from autolabel.checkpoint import load_trained
    from autolabel.datasets.format import split_subjects
    from autolabel.datasets.sources import open_dataset
    from autolabel.losses import dice_counts, dice_score
    from autolabel.options import CellOptions
    from autolabel.state import scale_features

    options = CellOptions.model_validate_json((cell / OPTIONS).read_text())
    model, info = load_trained(cell / MODEL, device="cpu")
    cohort = open_dataset(options.dataset)
    _, validation = split_subjects(cohort.subjects, options.partition)
    ids = validation[:subjects]
    x, y = cohort.arrays(ids, options.inputs, options.prediction, options.image_size)
    with torch.inference_mode():  # the trainer's own scaling and Dice (autolabel.state, autolabel.losses)
        logits = model(torch.from_numpy(scale_features(x, info["feature_mean"], info["feature_std"])))
        target = torch.from_numpy(y)
        dice = np.stack([dice_score(*dice_counts(logits[i : i + 1], target[i : i + 1])).numpy()
                         for i in range(len(ids))])
    predicted = (logits > 0).numpy().astype(np.float32)  # sigmoid > 0.5, as the trainer scores Dice
    channels = list(info["channels"])
    c = channels.index("curvature") if "curvature" in channels else 0
    return {"subjects": ids, "background": x[:, c], "channel": channels[c], "truth": y, "predicted": predicted,
            "labels": list(info["labels"]), "dice": dice}


def plot_predictions(path: Path, cell: Path, title: str, subjects: int = SHOWN_SUBJECTS) -> None:
    """A few validation subjects of a trained cell: the input's curvature, the true label borders
    (solid) and the predicted ones (dashed), and each subject's Dice per label."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    p = predict_validation(cell, subjects)
    n, (rows, cols) = len(p["subjects"]), p["background"].shape[1:]
    fig = Figure(figsize=(min(12.0, 2.2 + 6.0 * cols / rows), 3.0 * n + 0.9), layout="constrained")
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    colours = dict(zip(p["labels"], LABEL_COLOURS * 2))
    for i, ax in enumerate(axes):
        ax.imshow(p["background"][i], cmap="gray", interpolation="nearest")
        for j, label in enumerate(p["labels"]):
            for mask, style in ((p["truth"][i, j], "solid"), (p["predicted"][i, j], "dashed")):
                if mask.any() and not mask.all():
                    ax.contour(mask, levels=[0.5], colors=[colours[label]], linestyles=style, linewidths=1.1)
        dice = ", ".join(f"{label} {d:.3f}" for label, d in zip(p["labels"], p["dice"][i]))
        ax.set_title(f"subject {p['subjects'][i]}: Dice {dice}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Line2D([], [], color=colours[label], label=label) for label in p["labels"]]
    handles += [Line2D([], [], color="black", label="true border"),
                Line2D([], [], color="black", linestyle="dashed", label="predicted border")]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8)
    fig.suptitle(f"{title}: validation subjects on {p['channel']} (left | right hemisphere)", fontsize=10)
    save(fig, path, dpi=90)
