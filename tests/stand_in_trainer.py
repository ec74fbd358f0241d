"""A stand-in for ``python -m autolabel.train CELL_DIR... [--force]`` that trains nothing.

    python -m tests.stand_in_trainer CELL_DIR [CELL_DIR ...] [--force]

It reads each cell's options.json and plan.json (the trainer's own models), "trains" one
epoch per ``until x num_epochs`` of its plan, checkpoints after every epoch, resumes from its
checkpoint, and writes history.csv, training.log and, last and atomically, metrics.json
through autolabel.celldir, with Dice scores derived from the cell's options, so the flow,
the runner, the ledger and the summary see real cell folders in well under a second.

Faults on request, by cell id, in ``$STAND_IN_FAULTS`` (JSON ``{"<cell id>": "<fault>"}``):
``kill-once`` (SIGKILL itself after the first epoch's checkpoint, the first time only),
``fail`` (invalid options: exit 2), ``diverge`` (exit 3). ``$STAND_IN_EPOCH_S`` makes each
epoch take that long (default 0); with ``$STAND_IN_HOLD`` (a path) a cell's first epoch waits
until that file exists, so a test decides when training goes on. Exit status: the worst of its
cells, as the trainer's.

Stopping as the trainer does: SIGINT, SIGTERM or SIGHUP ends the epoch in progress (its
checkpoint is written), then exits 128 + the signal; a signal of another kind after the first
is ignored, the same one again kills. A cell whose folder's lock is held exits 75.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path

from autolabel import celldir
from autolabel.datasets.format import LABELS
from autolabel.errors import (
    EXIT_BAD_INPUT,
    EXIT_BUSY,
    EXIT_DIVERGED,
    EXIT_OK,
    STOP_SIGNALS,
    worst,
)
from autolabel.lock import FolderLock, LockBusy
from autolabel.options import CellMetrics, CellOptions, Plan

KILLED = "stand-in-killed"  # marker: this cell was killed once already


def dice_of(content: str, labels: tuple[str, ...]) -> dict[str, float]:
    """Scores in [0.5, 0.9) that depend only on the cell's options and plan: reruns give the same."""
    digest = hashlib.sha256(content.encode()).digest()
    return {name: round(0.5 + 0.4 * digest[i] / 256, 4) for i, name in enumerate(labels)}


STOP: list[int] = []  # the signal that asked this process to stop (set by its handler only)


def stop(signum: int, _frame) -> None:
    if not STOP:
        STOP.append(signum)
        signal.signal(signum, signal.SIG_DFL)


def train_locked(cell: Path, fault: str, force: bool, epoch_s: float) -> int:
    try:
        with FolderLock(cell):
            return train(cell, fault, force, epoch_s)
    except LockBusy as e:
        print(e, file=sys.stderr, flush=True)
        return EXIT_BUSY


def train(cell: Path, fault: str, force: bool, epoch_s: float) -> int:
    """One stand-in cell; its exit status."""
    metrics = cell / celldir.METRICS
    if celldir.is_complete(cell) and not force:
        print(f"{cell.name}: complete; skipped", flush=True)
        return EXIT_OK
    text = (cell / celldir.OPTIONS).read_text()
    options = CellOptions.model_validate_json(text)
    plan_text = (cell / celldir.PLAN).read_text()
    plan = Plan.model_validate_json(plan_text)
    if fault == "fail":
        print(f"{cell.name}: invalid options (stand-in fault)", flush=True)
        celldir.write_json_atomic(metrics, CellMetrics(status="failed", message="invalid options").model_dump())
        return EXIT_BAD_INPUT
    total = options.until * sum(r.num_epochs for r in plan.root)
    metrics.unlink(missing_ok=True)  # as the trainer: an old result must not outlive the training it starts
    ckpt = cell / celldir.CHECKPOINT
    done = 0 if force or not ckpt.is_file() else int(ckpt.read_text())
    log = [f"resumed from {celldir.CHECKPOINT} at epoch {done}"] if done else []
    hold = os.environ.get("STAND_IN_HOLD")
    while hold and not Path(hold).exists() and not STOP:
        time.sleep(0.02)
    for epoch in range(done + 1, total + 1):
        time.sleep(epoch_s)
        if fault == "diverge":
            celldir.write_text_atomic(cell / celldir.LOG, "\n".join(log + [f"epoch {epoch}: loss is nan"]) + "\n")
            result = CellMetrics(status="diverged", message=f"loss is nan at epoch {epoch}", epochs=epoch)
            celldir.write_json_atomic(metrics, result.model_dump())
            return EXIT_DIVERGED
        celldir.write_text_atomic(ckpt, str(epoch))
        log.append(f"epoch {epoch} of {total}")
        history = "epoch,loss\n" + "".join(f"{e},{1 / e:.4f}\n" for e in range(1, epoch + 1))
        celldir.write_text_atomic(cell / celldir.HISTORY, history)
        celldir.write_text_atomic(cell / celldir.LOG, "\n".join(log) + "\n")
        print(f"{cell.name}: epoch {epoch} of {total}", flush=True)
        if fault == "kill-once" and not (cell / KILLED).exists():
            (cell / KILLED).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        if STOP and epoch < total:
            print(f"{cell.name}: stopped after epoch {epoch}; checkpoint saved", file=sys.stderr, flush=True)
            return 128 + STOP[0]
    dice = dice_of(text + plan_text, LABELS[options.prediction])
    result = CellMetrics(status="complete", dice=dice, mean_dice=round(sum(dice.values()) / len(dice), 6),
                         best_val_dice_loss=round(1 - min(dice.values()), 6), epochs=total, device="stand-in")
    ckpt.unlink(missing_ok=True)
    celldir.write_json_atomic(metrics, result.model_dump())
    return EXIT_OK


def main(argv: list[str]) -> int:
    force = "--force" in argv
    faults = json.loads(os.environ.get("STAND_IN_FAULTS") or "{}")
    epoch_s = float(os.environ.get("STAND_IN_EPOCH_S") or 0)
    cells = [Path(a) for a in argv if not a.startswith("-")]
    for s in STOP_SIGNALS:
        signal.signal(s, stop)
    codes = []
    for c in cells:
        if STOP:
            break
        codes.append(train_locked(c, faults.get(c.name, ""), force, epoch_s))
    return worst(codes + [128 + s for s in STOP])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
