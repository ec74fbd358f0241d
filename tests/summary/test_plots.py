"""Tests of flows/summary/plots.py: one PNG per varying factor, with content.

    .venv/bin/python -m pytest -q tests/test_plots.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.image import imread

from autolabel.celldir import HISTORY
from flows.spec.cells import cell_dir
from flows.summary import files as S
from flows.summary import plots
from flows.summary import rows as R
from tests.summary_grid import build_grid

# autolabel.train.HISTORY_COLUMNS (not imported: it would load torch)
HEADER = ",".join(("repeat", "round", "epoch", "lr", "batch_size", "train_bce", "train_dice", "train_loss",
                   "val_bce", "val_dice", "val_loss", "val_mean_dice", "seconds"))  # fmt: skip


def test_plots_one_png_per_varying_factor(grid):
    g, _, _, result = grid
    names = sorted(Path(p).name for p in result.plots)
    assert names == ["dice_by_bce_weight.png", "dice_by_inputs.png", "dice_by_lr.png", "dice_by_prediction.png"]
    for p in result.plots:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Path(p).stat().st_size > 5000
        pixels = imread(p)
        assert np.std(pixels[..., :3]) > 0.05  # not a blank canvas
    assert plots.plot_name("bce weight") == "dice_by_bce_weight.png"


def test_a_factor_that_stops_varying_leaves_no_plot(grid, tmp_path):
    _, _, rows, _ = grid
    one_lr = [r for r in rows if r["lr"] == 0.0025]
    written = plots.write_plots(tmp_path, one_lr)
    assert sorted(Path(p).name for p in written) == sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert "dice_by_lr.png" not in {Path(p).name for p in written} and len(written) == 3
    assert plots.write_plots(tmp_path, [{**r, "status": "failed"} for r in one_lr]) == []


def write_history(d: Path, repeats: int, epochs: int, final: float, rng: np.random.Generator) -> None:
    lines = [HEADER]
    for rep in range(repeats):
        for ep in range(epochs):
            loss = 1.2 * np.exp(-ep / 4) + 0.3 + rng.normal(0, 0.01)
            dice = final * (1 - np.exp(-(ep + 1) / 3))
            lines.append(f"{rep},0,{ep + 1},0.002,4,0.1,0.2,{loss},0.1,0.2,{loss + 0.05},{dice},1.0")
    (d / HISTORY).write_text("\n".join(lines) + "\n")


def test_learning_curves_from_each_cells_history(tmp_path):
    rng = np.random.default_rng(0)
    cells = build_grid(tmp_path, reps=1)
    for i, c in enumerate(cells):
        if i % 7:  # some cells have no history.csv: drawn without them, no error
            write_history(cell_dir(tmp_path, c), repeats=2 if i % 2 else 1, epochs=12, final=0.8, rng=rng)
    (cell_dir(tmp_path, cells[1]) / HISTORY).write_text("repeat,round\n0,0\n")  # unreadable: skipped
    result = S.write_summary(tmp_path, cells, R.collect_rows(tmp_path, cells))
    png = tmp_path / "plots" / plots.LEARNING_CURVES
    assert str(png) in result.plots and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(png)[..., :3]
    assert pixels.shape[0] > 4 * 150  # a row of panels per stratum (4 here)
    assert np.std(pixels) > 0.05 and (np.abs(pixels - 1).sum(axis=2) > 0.5).mean() > 0.02  # ink, not blank
    assert f"![learning curves](plots/{plots.LEARNING_CURVES})" in result.markdown
    hist = plots.read_history(cell_dir(tmp_path, cells[3]))
    assert len(hist) == 2 and len(hist[0]["val_mean_dice"]) == 12
    assert plots.read_history(cell_dir(tmp_path, cells[1])) is None
