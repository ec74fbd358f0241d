"""Tests of flows/plots.py: one PNG per varying factor, with content.

    .venv/bin/python -m pytest -q tests/test_plots.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.image import imread

from flows import plots
from tests.summary_grid import grid  # noqa: F401 - a fixture


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
