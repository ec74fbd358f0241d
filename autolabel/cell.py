"""One cell, from its folder to its metrics: the stages train_cell is made of, and run_cell's exit code.

    from autolabel.control import RunControl
    from autolabel.cell import run_cell
    run_cell("/tmp/cell", RunControl())      # the exit code; files in /tmp/cell (see autolabel.train)

One stage per function, torchvision-style: :func:`start_run` (inputs, device, data, the
checkpoint: everything that can be wrong fails there, before any work), :func:`begin_epoch`
(a new repeat's weights, a new round's optimizer), :func:`train_epoch` (one epoch of the method,
autolabel/loop.py), :func:`checkpoint_if_due` and :func:`stop_if_asked` between epochs, and
:func:`finish_cell` (model.pt, then metrics.json last). :class:`CellRun` is what they share.
A fused pack (autolabel/fused.py) runs the same stages for each of its cells around one joint
epoch: :func:`begin_round` and :func:`close_epoch` are the per-cell halves of the two epoch stages.
"""

from __future__ import annotations

import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from autolabel import storage
from autolabel.celldir import (
    CHECKPOINT,
    HISTORY,
    LOG,
    METRICS,
    MODEL,
    OPTIONS,
    CellDir,
    delete,
    fail_cell,
    is_complete,
    load_cell,
    open_cell,
    push,
    remove_temporaries,
    write_history,
    write_metrics,
)
from autolabel.checkpoint import (
    load_checkpoint,
    recover_metrics,
    restore,
    save_checkpoint,
    save_model,
)
from autolabel.control import RunControl
from autolabel.errors import (
    EXIT_BAD_INPUT,
    EXIT_BUSY,
    EXIT_DIVERGED,
    EXIT_ERROR,
    EXIT_NO_SPACE,
    EXIT_OK,
    BadInput,
    Diverged,
    Stopped,
    no_space,
)
from autolabel.lock import FolderLock, LockBusy
from autolabel.loop import (
    TABLE_HEADER,
    diverged,
    final_metrics,
    finish_round,
    format_row,
    history_row,
    new_model,
    new_optimizer,
    record_epoch,
    restart_optimizer,
    run_epoch,
)
from autolabel.model import ModelError, count_parameters, find_weights
from autolabel.options import CellMetrics, CellOptions, Plan, training_problem
from autolabel.state import (
    Data,
    Progress,
    configure_device,
    device_name,
    load_data,
    pick_device,
)
from autolabel.step import TrainStep


@dataclass
class CellRun:
    """One cell being trained: its inputs, its data on the device, and where training stands."""

    cell: CellDir
    control: RunControl
    options: CellOptions
    plan: Plan
    device: torch.device
    data: Data
    progress: Progress
    say: Callable[[str], None]
    model: torch.nn.Module | None = None
    optimizer: torch.optim.Adam | None = None
    scheduler: torch.optim.lr_scheduler.StepLR | None = None
    step: TrainStep | None = None
    wall_before: float = 0.0  # wall seconds of earlier runs of this cell (resumed ones)
    started: float = field(default_factory=time.perf_counter)
    last_checkpoint: float = field(default_factory=time.monotonic)

    def log(self, line: str) -> None:
        """A line of training.log, also said to the caller."""
        self.progress.log.append(line)
        self.say(line)

    def clock(self) -> None:
        """Bring the cell's wall seconds up to now (every run of it summed)."""
        self.progress.wall_seconds = self.wall_before + time.perf_counter() - self.started

    def push(self, names: list[str]) -> None:
        """Upload these files of a remote cell, standing aside from the run's capture gate meanwhile."""
        push(self.cell, names, self.control.gate.idle)


# ----------------------------------------------------------------------------- the stages


def start_run(
    cell: CellDir, control: RunControl, force: bool, device_override: str | None, say: Callable[[str], None]
) -> CellRun:
    """Inputs, device, pretrained weights, data, checkpoint; resume exactly there, or introduce the run.

    Everything that can be wrong with the inputs raises BadInput here, before any work.
    """
    options, plan = load_cell(cell)
    device = pick_device(device_override or options.device, cell.name(OPTIONS))
    if options.pretrained:
        try:
            find_weights(options.base_model)
        except ModelError as e:
            raise BadInput(f"{cell.name(OPTIONS)}: {e}") from None
    configure_device(device)
    data = load_data(options, device, cell.name(OPTIONS), control)
    batches = tuple(r.batch_size or options.batch_size for r in plan.root)  # the data is shared; the plan is not
    problem = training_problem(len(data.x_train), tuple(data.x_train.shape[-2:]), batches)
    if problem:
        raise BadInput(f"{cell.name(OPTIONS)}: {problem}")
    ckpt = None if force else load_checkpoint(cell, options, plan)
    progress = Progress(**ckpt["progress"]) if ckpt else Progress()
    run = CellRun(cell, control, options, plan, device, data, progress, say, wall_before=progress.wall_seconds)
    if ckpt and progress.repeat < options.until:
        run.model = new_model(options, data, device, progress.repeat, control.init_lock)
        if progress.epoch:  # mid-round: the round's optimizer and scheduler go on
            run.optimizer, run.scheduler = new_optimizer(run.model, plan[progress.round])
        restore(ckpt, run.model, run.optimizer, run.scheduler, device, control.init_lock)
        run.log(f"resumed from {CHECKPOINT} at repeat {progress.repeat} round {progress.round} "
                f"epoch {progress.epoch + 1}")
    elif not ckpt:
        for line in describe_run(run):
            run.log(line)
    return run


def describe_run(run: CellRun) -> list[str]:
    """The first lines of training.log: what is trained, on what, where."""
    o, data = run.options, run.data
    return [
        f"cell {run.cell.uri}",
        f"device {device_name(run.device)}",
        f"data {len(data.x_train)} train / {len(data.x_val)} validation subjects, inputs {o.inputs} "
        f"({len(data.channels)} channels), prediction {o.prediction} ({' '.join(data.labels)}), "
        f"images {tuple(data.x_train.shape[-2:])}",
        f"plan {len(run.plan)} rounds x until {o.until}, base model {o.base_model}"
        f"{' (ImageNet)' if o.pretrained else ''}",
    ]


def begin_epoch(run: CellRun) -> None:
    """:func:`begin_round`, then the cell's step (made once) at the round's BCE weight."""
    begin_round(run)
    rnd = run.plan[run.progress.round]
    if run.step is None:
        run.step = TrainStep(run.model, run.optimizer, run.data.x_train, run.data.y_train, rnd.bce_weight,
                             graphs=run.control.graphs, gate=run.control.gate)
    run.step.set_bce_weight(rnd.bce_weight)


def begin_round(run: CellRun) -> None:
    """At a round's first epoch: a new repeat's fresh weights, a new round's optimizer.

    Both go into the same tensors in place, so the step recorded as a CUDA graph once serves
    the whole run (autolabel/step.py), and a fused pack's cell writes into its slice of the
    pack's weights (autolabel/fused.py).
    """
    p, rnd = run.progress, run.plan[run.progress.round]
    if p.epoch == 0:
        if p.round == 0:
            fresh = new_model(run.options, run.data, run.device, p.repeat, run.control.init_lock)
            if run.model is None:
                run.model = fresh
            else:
                run.model.load_state_dict(fresh.state_dict())
            if p.repeat == 0:
                run.log(f"model {count_parameters(run.model):,} parameters")
                run.log(TABLE_HEADER)
        if run.optimizer is None:
            run.optimizer, run.scheduler = new_optimizer(run.model, rnd)
        else:
            run.scheduler = restart_optimizer(run.optimizer, rnd)


def train_epoch(run: CellRun) -> None:
    """One epoch of the method: train, validate, then :func:`close_epoch`."""
    row = run_epoch(run.step, run.scheduler, run.data, run.options, run.plan[run.progress.round], run.progress)
    close_epoch(run, row)


def close_epoch(run: CellRun, row: dict) -> None:
    """Record an epoch's row and log it; the round's end when it is its last.

    A NaN or infinite loss ends the cell as diverged (end_diverged raises Diverged).
    """
    p, rnd = run.progress, run.plan[run.progress.round]
    if diverged(row):
        run.clock()
        end_diverged(run, row)
    record_epoch(run.model, p, row)
    run.log(format_row(row))
    if p.epoch == rnd.num_epochs:
        finish_round(run.model, p, run.plan)
    run.clock()


def end_diverged(run: CellRun, row: dict) -> None:
    """Record the diverged epoch in history, training.log and metrics.json, then raise Diverged.

    The checkpoint keeps the last epoch it saved, never the diverged one: a rerun resumes there.
    """
    p = run.progress
    message = (f"loss became {row['train_loss']} (train) / {row['val_loss']} (validation) at repeat "
               f"{p.repeat} round {p.round} epoch {p.epoch + 1}; lower the lr")
    p.rows.append(history_row(row))
    run.log(format_row(row))
    run.log(f"diverged: {message}")
    write_history(run.cell, p.rows, p.log)
    run.push([HISTORY, LOG])
    write_metrics(run.cell, final_metrics(p, run.data, run.device, "diverged", message))
    raise Diverged(message)


def checkpoint_due(run: CellRun, stopping: bool) -> bool:
    """Whether a checkpoint is due: ``interval`` seconds since the last (0: every epoch), or a stop."""
    return stopping or time.monotonic() - run.last_checkpoint >= run.control.checkpoint_interval()


def checkpoint_if_due(run: CellRun, stopping: bool, due: bool | None = None) -> None:
    """After an epoch: a checkpoint when :func:`checkpoint_due` (or ``due``: one decision for all
    the cells of a fused pack); history.csv and training.log every epoch."""
    due = checkpoint_due(run, stopping) if due is None else due
    p = run.progress
    if due:  # before history.csv: with a checkpoint every epoch, a row on disk is a saved epoch
        save_checkpoint(run.cell, run.model, run.optimizer, run.scheduler, p, run.options, run.plan)
        run.last_checkpoint = time.monotonic()
    write_history(run.cell, p.rows, p.log)
    if due:
        run.push([CHECKPOINT, HISTORY, LOG])


def stop_if_asked(run: CellRun, stopping: bool) -> None:
    """Raise Stopped once a stop was asked for (the epoch in progress is already checkpointed)."""
    p = run.progress
    if stopping and p.repeat < run.options.until:
        raise Stopped(f"stopped by {run.control.stop_reason} after repeat {p.repeat} round {p.round} "
                      f"epoch {p.epoch}; {CHECKPOINT} is saved, rerun to resume")


def finish_cell(run: CellRun) -> CellMetrics:
    """model.pt, then metrics.json last; the checkpoint goes (model.pt holds the result)."""
    p, best = run.progress, run.progress.best
    scores = " ".join(f"{n} {d:.3f}" for n, d in zip(run.data.labels, best["dice"]))
    run.log(f"best repeat {best['repeat']} round {best['round']} epoch {best['epoch']}: "
            f"validation Dice loss {best['val_dice_loss']:.4f}, Dice {scores}")
    run.clock()
    write_history(run.cell, p.rows, p.log)
    save_model(run.cell, p, run.data, run.options, run.plan)
    run.push([MODEL, HISTORY, LOG])
    metrics = final_metrics(p, run.data, run.device, "complete")
    write_metrics(run.cell, metrics)
    # The checkpoint (hundreds of MB) would only cost storage now.
    delete(run.cell, CHECKPOINT)
    return metrics


def train_cell(
    cell: CellDir, control: RunControl, force: bool = False, device_override: str | None = None,
    say: Callable[[str], None] = print,
) -> CellMetrics | None:  # fmt: skip
    """Train one cell in ``cell.work`` (resuming from its checkpoint) and return its metrics (None when
    ``control.until_round`` paused it first, checkpointed at that round's end).

    Raises BadInput before any training for unusable inputs, Diverged (with the metrics so
    far already written) when a loss becomes NaN or infinite, and Stopped after the
    checkpoint of the epoch in progress once ``control`` asks to stop.
    """
    return train_run(start_run(cell, control, force, device_override, say))


def train_run(run: CellRun) -> CellMetrics | None:
    """The epochs of a started cell (:func:`start_run`), then :func:`finish_cell` (None: paused by
    ``--until-round`` at a round's end, checkpointed)."""
    while run.progress.repeat < run.options.until:
        if run.control.pauses_at(run.progress.repeat * len(run.plan) + run.progress.round):  # --until-round
            run.log(f"paused after {run.control.until_round} rounds (--until-round): {CHECKPOINT} is saved; a run "
                    "without it trains on")
            checkpoint_if_due(run, stopping=True)
            return None  # no metrics.json: the cell is not done
        begin_epoch(run)
        train_epoch(run)
        # One look at the stop flag per epoch: a signal that lands after it (while this epoch's
        # files are written) is seen after the next epoch, which then checkpoints. Reading the
        # flag twice would stop here without the checkpoint the message promises.
        stopping = run.control.stop_requested
        checkpoint_if_due(run, stopping)
        stop_if_asked(run, stopping)
    return finish_cell(run)


# ----------------------------------------------------------------------------- exit codes


def run_cell(
    uri: str, control: RunControl, force: bool = False, device: str | None = None, say: Callable[[str], None] = print
) -> int:
    """Train one cell and turn the outcome into an exit code; never raises.

    A local cell is trained under its folder's lock (autolabel.lock): a second trainer of the
    same cell (a rerun racing a dying one, two flows) exits 75 at once without touching it.
    An s3:// cell is guarded by its grid's lock and the ECS runner's adoption of running tasks.
    """
    lock, refused = lock_cell(uri)
    if refused is not None:
        return refused
    try:
        return train_opened(uri, control, force, device, say)
    finally:
        if lock is not None:
            lock.release()


def lock_cell(uri: str) -> tuple[FolderLock | None, int | None]:
    """(the local cell folder's lock, now held; None for others), or (None, the exit code that refuses it)."""
    lock = FolderLock(uri) if not storage.is_s3(uri) and Path(uri).is_dir() else None
    try:
        if lock is not None:
            lock.acquire()
    except LockBusy as e:
        print(e, file=sys.stderr, flush=True)
        return None, EXIT_BUSY
    except OSError as e:  # an unwritable cell folder, or a full disk
        if no_space(e):
            print(f"{uri}: {no_space(e)}: cannot lock the cell folder; free space, then rerun", file=sys.stderr,
                  flush=True)
            return None, EXIT_NO_SPACE
        print(f"{uri}: cannot lock the cell folder ({e.strerror or e}); make it writable", file=sys.stderr, flush=True)
        return None, EXIT_BAD_INPUT
    return lock, None


def train_opened(uri: str, control: RunControl, force: bool, device: str | None, say: Callable[[str], None]) -> int:
    """run_cell once the cell is ours: open it, train it, map the outcome to an exit code."""
    try:
        with open_cell(uri, force, control.gate.idle) as cell:
            if not needs_training(cell, force, say):
                return EXIT_OK
            return outcome(cell, control, lambda: train_cell(cell, control, force, device, say))
    except storage.StorageError as e:
        print(e, file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    except Exception as e:  # noqa: BLE001 - one broken cell must not stop the others
        return unexpected(uri, e)


def needs_training(cell: CellDir, force: bool, say: Callable[[str], None]) -> bool:
    """False for a complete cell (said so; unless ``force``) or one whose unreadable metrics.json
    could be rebuilt (autolabel.checkpoint.recover_metrics); else True, with a stale result removed. First the
    temporaries a killed trainer left go (ours alone: the caller holds the cell's lock)."""
    stale = remove_temporaries(cell.work)
    if stale:
        say(f"{cell.uri}: removed {len(stale)} temporary file(s) a killed trainer left: "
            f"{', '.join(p.name for p in stale)}")
    if is_complete(cell.work) and not force:
        say(f"{cell.uri}: complete, skipped (rerun with --force to train again)")
        return False
    if not force and recover_metrics(cell, say):
        return False
    if (cell.work / METRICS).exists():  # a stale failed/diverged result must not outlive this run
        delete(cell, METRICS)
    return True


def outcome(cell: CellDir, control: RunControl, work: Callable[[], object]) -> int:
    """Run ``work`` for this cell and map how it ended to the cell's exit code (said on stderr).

    Bad input is recorded in metrics.json (status failed); a divergence already is. Other
    exceptions are the caller's (:func:`unexpected`).
    """
    try:
        work()
        return EXIT_OK
    except BadInput as e:
        print(e, file=sys.stderr, flush=True)
        fail_cell(cell, "failed", str(e))
        return EXIT_BAD_INPUT
    except Diverged as e:
        print(f"{cell.uri}: diverged: {e}", file=sys.stderr, flush=True)
        return EXIT_DIVERGED
    except Stopped as e:
        print(f"{cell.uri}: {e}", file=sys.stderr, flush=True)
        return control.stop_code


def unexpected(uri: str, e: BaseException) -> int:
    """The exit code of an exception nobody expected: a full disk is the machine's fault (one line,
    EXIT_NO_SPACE: a rerun resumes); anything else prints its traceback, naming the cell (EXIT_ERROR)."""
    if no_space(e):
        print(f"{uri}: {no_space(e)}; free space, then rerun: the cell resumes from its last checkpoint",
              file=sys.stderr, flush=True)
        return EXIT_NO_SPACE
    print(f"{uri}: unexpected error, the traceback follows", file=sys.stderr)
    traceback.print_exc()
    sys.stderr.flush()
    return EXIT_ERROR
