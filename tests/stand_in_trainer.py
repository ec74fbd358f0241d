"""A stand-in for ``python -m autolabel.train CELL_DIR... [--force] [--until-round N]`` that trains nothing.

    python -m tests.stand_in CELL_DIR [CELL_DIR ...] [--force] [--until-round N]   (tests/stand_in.py)

It reads each cell's options.json and plan.json (the trainer's own models), "trains" one
epoch per ``until x num_epochs`` of its plan, checkpoints after every epoch, resumes from its
checkpoint, and writes history.csv (the trainer's columns: a learning curve fixed by the cell's
options and plan), training.log and, last and atomically, metrics.json through autolabel.celldir,
scored by the trainer's own rule (autolabel.scores), so the flow, the runner, the ledger, the
halving and the summary see real cell folders in well under a second. ``--until-round N`` stops
each cell after N rounds (repeats counted) without metrics.json, exit 0, as the trainer does.

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

import csv
import hashlib
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Sequence

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
from autolabel.scores import score_at

KILLED = "stand-in-killed"  # marker: this cell was killed once already


def unit(*parts: object) -> float:
    """A fixed number in [0, 1) for ``parts``: reruns give the same."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:6], "big") / 2**48


def epoch_row(content: str, plan: Plan, batch_size: int, n: int) -> dict:
    """History row of global epoch ``n`` (1-based): each repeat a fresh curve falling from 0.9 towards
    the cell's floor at the cell's own pace, so early ranks mostly hold and some cells bloom late."""
    per_repeat = sum(r.num_epochs for r in plan.root)
    repeat, t = divmod(n - 1, per_repeat)
    rnd, into = 0, t
    while into >= plan.root[rnd].num_epochs:
        into -= plan.root[rnd].num_epochs
        rnd += 1
    floor = 0.1 + 0.4 * unit(content, "floor") + 0.03 * unit(content, "repeat", repeat)
    pace = 1 + 6 * unit(content, "pace")  # epochs to fall by a factor e: large paces bloom late
    dice_loss = floor + (0.9 - floor) * math.exp(-(t + 1) / pace) + 0.01 * unit(content, "wiggle", n)
    val_loss = dice_loss + 0.05 + 0.02 * unit(content, "loss", n)
    r = plan.root[rnd]
    return {"repeat": repeat, "round": rnd, "epoch": into + 1, "lr": r.lr, "batch_size": r.batch_size or batch_size,
            "train_bce": 0.1, "train_dice": dice_loss - 0.05, "train_loss": val_loss - 0.05, "val_bce": 0.1,
            "val_dice": round(dice_loss, 6), "val_loss": round(val_loss, 6),
            "val_mean_dice": round(0.98 - dice_loss, 6), "seconds": 0.0}


def write_history(cell: Path, rows: list[dict]) -> None:
    def write(path: Path) -> None:
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=celldir.HISTORY_COLUMNS)
            w.writeheader()
            w.writerows(rows)

    celldir.write_atomic(cell / celldir.HISTORY, write)


STOP: list[int] = []  # the signal that asked this process to stop (set by its handler only)


def stop(signum: int, _frame) -> None:
    if not STOP:
        STOP.append(signum)
        signal.signal(signum, signal.SIG_DFL)


def train_locked(cell: Path, fault: str, force: bool, epoch_s: float, until_round: int | None) -> int:
    try:
        with FolderLock(cell):
            return train(cell, fault, force, epoch_s, until_round)
    except LockBusy as e:
        print(e, file=sys.stderr, flush=True)
        return EXIT_BUSY


def train(cell: Path, fault: str, force: bool, epoch_s: float, until_round: int | None = None) -> int:
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
    epochs = [r.num_epochs for r in plan.root]
    stop_at = total if until_round is None else min(total, sum(epochs[g % len(epochs)] for g in range(until_round)))
    ckpt = cell / celldir.CHECKPOINT
    done = 0 if force or not ckpt.is_file() else int(ckpt.read_text())
    log = [f"resumed from {celldir.CHECKPOINT} at epoch {done}"] if done else []
    content = text + plan_text
    rows = [epoch_row(content, plan, options.batch_size, n) for n in range(1, done + 1)]
    hold = os.environ.get("STAND_IN_HOLD")
    while hold and not Path(hold).exists() and not STOP:
        time.sleep(0.02)
    if done >= stop_at < total:
        print(f"{cell.name}: paused after {until_round} rounds", flush=True)
        return EXIT_OK
    for epoch in range(done + 1, total + 1):
        time.sleep(epoch_s)
        if fault == "diverge":
            celldir.write_text_atomic(cell / celldir.LOG, "\n".join(log + [f"epoch {epoch}: loss is nan"]) + "\n")
            result = CellMetrics(status="diverged", message=f"loss is nan at epoch {epoch}", epochs=epoch)
            celldir.write_json_atomic(metrics, result.model_dump())
            return EXIT_DIVERGED
        celldir.write_text_atomic(ckpt, str(epoch))
        log.append(f"epoch {epoch} of {total}")
        rows.append(epoch_row(content, plan, options.batch_size, epoch))
        write_history(cell, rows)
        celldir.write_text_atomic(cell / celldir.LOG, "\n".join(log) + "\n")
        print(f"{cell.name}: epoch {epoch} of {total}", flush=True)
        if fault == "kill-once" and not (cell / KILLED).exists():
            (cell / KILLED).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        if STOP and epoch < total:
            print(f"{cell.name}: stopped after epoch {epoch}; checkpoint saved", file=sys.stderr, flush=True)
            return 128 + STOP[0]
        if epoch == stop_at < total:
            print(f"{cell.name}: paused after {until_round} rounds", flush=True)
            return EXIT_OK
    best = score_at(rows, epochs, len(epochs) * options.until)
    dice = {name: best.mean_dice for name in LABELS[options.prediction]}
    result = CellMetrics(status="complete", dice=dice, mean_dice=best.mean_dice,
                         best_val_dice_loss=best.val_dice_loss, epochs=total, device="stand-in")
    ckpt.unlink(missing_ok=True)
    celldir.write_json_atomic(metrics, result.model_dump())
    return EXIT_OK


def main(argv: list[str], stopped: Sequence[int] = ()) -> int:
    """The command (tests/stand_in.py); ``stopped``: the stop signal that came while it loaded."""
    force = "--force" in argv
    until_round = int(argv[argv.index("--until-round") + 1]) if "--until-round" in argv else None
    faults = json.loads(os.environ.get("STAND_IN_FAULTS") or "{}")
    epoch_s = float(os.environ.get("STAND_IN_EPOCH_S") or 0)
    valued = ("--until-round", "--threads", "--workers")  # the trainer's flags that take a value
    cells = [Path(a) for i, a in enumerate(argv) if not a.startswith("-") and not (i and argv[i - 1] in valued)]
    for s in STOP_SIGNALS:
        if s not in stopped[:1]:  # a signal already received is back at its default: again, it kills
            signal.signal(s, stop)
    STOP.extend(stopped[:1])  # read after: a signal before the line above is in ``stopped``
    codes = []
    for c in cells:
        if STOP:
            break
        codes.append(train_locked(c, faults.get(c.name, ""), force, epoch_s, until_round))
    return worst(codes + [128 + s for s in STOP])


