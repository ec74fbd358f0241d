"""best/<inputs>-<prediction>/predictions.png from a really trained tiny cell, shown in summary.md.

    .venv/bin/python -m pytest -q tests/test_predictions.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from matplotlib.image import imread

from autolabel.celldir import MODEL
from autolabel.options import CellOptions, Plan, Round
from flows.spec.cells import Cell, CellOutcome, cell_dir, write_cell
from flows.summary import files as S
from flows.summary import rows as R

ROOT = Path(__file__).resolve().parents[2]


def not_blank(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(path)[..., :3]
    assert np.std(pixels) > 0.05 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, path


def test_a_best_cell_draws_its_validation_predictions_and_the_summary_shows_them(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOLABEL_CACHE", str(tmp_path / "cache"))
    options = CellOptions.model_validate({"dataset": {"kind": "synthetic", "seed": 3, "subjects": 8, "rows": 32,
                                                      "cols": 64}, "partition": 0.25, "device": "cpu"})
    cell = Cell(id="a1b2c3d4e5f60718", label="tiny", hyper={"lr": 0.003}, options=options,
                plan=Plan([Round(lr=0.003, gamma=0.9, bce_weight=0.5, num_epochs=1)]))
    grid = tmp_path / "g"
    write_cell(grid, cell)
    run = subprocess.run([sys.executable, "-m", "autolabel.train", str(cell_dir(grid, cell))], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert (cell_dir(grid, cell) / MODEL).is_file()

    rows = R.collect_rows(grid, [cell], {cell.id: CellOutcome("complete")}, {})
    result = S.write_summary(grid, [cell], rows)
    (best,) = result.best
    picture = grid / "best" / "full-area" / "predictions.png"
    assert best.predictions == str(picture) and best.predictions_note == ""
    not_blank(picture)
    not_blank(grid / "plots" / "learning_curves.png")
    text = (grid / "summary.md").read_text()
    assert "![full-area predictions](best/full-area/predictions.png)" in text
    assert "![learning curves](plots/learning_curves.png)" in text

    # A winner whose model stayed elsewhere: no picture, the summary says why, and is still written.
    (cell_dir(grid, cell) / MODEL).unlink()
    (best,) = S.write_summary(grid, [cell], rows).best
    assert best.predictions is None and "no model.pt" in best.predictions_note
    assert not picture.exists() and "no model.pt" in (grid / "summary.md").read_text()
