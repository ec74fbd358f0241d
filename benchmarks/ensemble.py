"""Benchmark: what an ensemble of a grid's top 3 cells gains over its best cell, on the fsaverage cohort.

    .venv/bin/python benchmarks/ensemble.py                       # trains 12 CPU cells into /tmp/autolabel-ensemble
    .venv/bin/python benchmarks/ensemble.py --work DIR --threads 2

A small grid per stratum (inputs full and anat, prediction area): lr x bce_weight, the published
3-round plan (lr x 1, 2/3, 1/3; bce_weight x 1, 1/2, 0) of 2 epochs each, batch 2, on 64 subjects
of the fsaverage cohort at 64x128 split by id into 40 training, 12 validation and 12 test
subjects. The test subjects are never trained on nor used to choose: cells are ranked by their
validation mean Dice (as the grid's summary ranks them), then, on the test subjects:

- best: the top cell alone;
- top 3: the top three cells, their probabilities averaged before the labels are chosen
  (``autolabel.predict.models`` and ``autolabel.predict.vertices.choose_labels``, what ``autolabel.predict`` runs);
- members: the mean of the top three cells' own scores.

Scores are Dice per subject and label (the labels as predict chooses them: argmax above 0.5),
averaged over subjects. Then the same models label fsaverage5 as a FreeSurfer subject through
``python -m autolabel.predict`` (anat only: the subject has no myelin or diffusion maps), scored
on its surface against the atlas's V1-V3 within 7 degrees. Complete cells are skipped on a rerun.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from autolabel import train  # noqa: E402
from autolabel.control import RunControl  # noqa: E402
from autolabel.datasets.fsaverage import write_fsaverage5_subject  # noqa: E402
from autolabel.datasets.sources import open_dataset  # noqa: E402
from autolabel.datasets.synthetic import subject_ids  # noqa: E402
from autolabel.options import CellMetrics, FsaverageDataset  # noqa: E402
from autolabel.predict import command as predict  # noqa: E402
from autolabel.predict.models import load_ensemble  # noqa: E402
from autolabel.predict.vertices import choose_labels  # noqa: E402

DATASET = {"kind": "fsaverage", "seed": 0, "subjects": 64, "rows": 64, "cols": 128}
SPLIT = (40, 12, 12)  # train, validation, test subjects, in id order
GRID = {"lr": [0.00167, 0.00375, 0.00844], "bce_weight": [0.5, 0.75]}
EPOCHS = 2  # per round; 3 rounds
TOP = 3


def write_cells(work: Path, inputs: str) -> list[Path]:
    ids = subject_ids(DATASET["subjects"])
    partition = {"train": ids[: SPLIT[0]], "validation": ids[SPLIT[0] : SPLIT[0] + SPLIT[1]]}
    cells = []
    for lr, bce in itertools.product(GRID["lr"], GRID["bce_weight"]):
        cell = work / f"{inputs}-area-lr{lr}-bce{bce}"
        cell.mkdir(parents=True, exist_ok=True)
        options = {"inputs": inputs, "prediction": "area", "batch_size": 2, "device": "cpu", "dataset": DATASET,
                   "partition": partition}
        plan = [{"lr": lr * f, "bce_weight": bce * b, "num_epochs": EPOCHS}
                for f, b in ((1, 1), (2 / 3, 0.5), (1 / 3, 0))]
        (cell / "options.json").write_text(json.dumps(options))
        (cell / "plan.json").write_text(json.dumps(plan))
        cells.append(cell)
    return cells


def test_dice(prob: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Dice per subject and label [N, L] of the labels chosen from ``prob`` [N, L, H, W] against one-hot ``y``."""
    codes = choose_labels(prob, axis=1)
    out = np.empty(y.shape[:2])
    for k in range(y.shape[1]):
        p, t = codes == k + 1, y[:, k] > 0
        out[:, k] = 2 * (p & t).sum(axis=(1, 2)) / np.maximum(p.sum(axis=(1, 2)) + t.sum(axis=(1, 2)), 1)
    return out


def surface_dice(subjects_dir: Path, models: list[Path], out: Path) -> dict[str, float]:
    """Mean surface Dice per label of fsaverage5 labelled by ``models`` through the predict command."""
    req = predict.Request(subjects_dir=subjects_dir, models=models, out=out, truth="{hemi}.visual_area_7deg.mgz", force=True)
    with contextlib.redirect_stdout(io.StringIO()):
        rows = predict.predict(req)
    return predict.mean_dice(rows, ("V1", "V2", "V3"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/autolabel-ensemble"))
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    cohort = open_dataset(FsaverageDataset.model_validate(DATASET))
    test_ids = subject_ids(DATASET["subjects"])[SPLIT[0] + SPLIT[1] :]
    subjects_dir = args.work / "subjects"
    write_fsaverage5_subject(subjects_dir)  # with ?h.visual_area_7deg.mgz, the cohort's labels, as the truth
    for inputs in ("full", "anat"):
        cells = write_cells(args.work, inputs)
        with contextlib.redirect_stdout(io.StringIO()):
            assert train.train_cells([str(c) for c in cells], RunControl()) == 0
        ranked = sorted(cells, key=lambda c: -CellMetrics.model_validate_json((c / "metrics.json").read_text()).mean_dice)
        x, y = cohort.arrays(test_ids, inputs, "area")
        ens = load_ensemble([c / "model.pt" for c in ranked[:TOP]], torch.device("cpu"))
        probs = [m.probabilities(x) for m in ens.members]
        scores = {"best": test_dice(probs[0], y), f"top {TOP}": test_dice(np.mean(probs, axis=0), y)}
        members = np.mean([test_dice(p, y) for p in probs], axis=0)
        print(f"\n{inputs}-area: {len(cells)} cells, {len(test_ids)} test subjects; validation mean Dice of the top "
              f"{TOP}: " + ", ".join(f"{CellMetrics.model_validate_json((c / 'metrics.json').read_text()).mean_dice:.3f}"
                                      for c in ranked[:TOP]))
        for name, d in (*scores.items(), (f"members (mean of {TOP})", members)):
            per = d.mean(axis=0)
            print(f"  {name:20s} test Dice V1 {per[0]:.3f} V2 {per[1]:.3f} V3 {per[2]:.3f}  mean {per.mean():.3f}")
        gain = scores[f"top {TOP}"].mean(axis=1) - scores["best"].mean(axis=1)
        print(f"  gain of the top {TOP} over the best, per test subject: mean {gain.mean():+.3f}, "
              f"range {gain.min():+.3f} to {gain.max():+.3f}, better on {(gain > 0).sum()}/{len(gain)}")
        if inputs == "anat":
            best = surface_dice(subjects_dir, [ranked[0] / "model.pt"], args.work / "fs5-best")
            top = surface_dice(subjects_dir, [c / "model.pt" for c in ranked[:TOP]], args.work / "fs5-top")
            for name, d in (("best", best), (f"top {TOP}", top)):
                print(f"  fsaverage5 surface Dice, {name:6s}: " + " ".join(f"{k} {v:.3f}" for k, v in d.items())
                      + f"  mean {np.mean(list(d.values())):.3f}")
    print(f"\n{time.perf_counter() - started:.0f} s in all (cells already complete were skipped)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
