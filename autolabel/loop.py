"""Training one cell: the epoch, validation, rounds and repeats, and the cell's outcome.

    from autolabel.control import RunControl
    from autolabel.loop import run_cell
    run_cell("/tmp/cell", RunControl())      # the exit code; files in /tmp/cell (see autolabel.train)

The method is the published one (Benson, Song et al. 2025): Adam, StepLR once per epoch,
loss w*BCE + (1-w)*Dice; each round continues from the previous round's best epoch; the
best epoch of a round is chosen by validation loss, the best round of a repeat and the
best repeat by validation Dice loss. Each epoch's data order comes from a generator seeded by (seed, repeat, round,
epoch), so a resumed run sees the same batches. There is no flip augmentation: the images
are LH | RH, and a flip would swap the hemispheres.
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from autolabel import storage
from autolabel.celldir import (
    CHECKPOINT,
    HISTORY,
    HISTORY_COLUMNS,
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
    write_history,
    write_metrics,
)
from autolabel.checkpoint import load_checkpoint, restore, save_checkpoint, save_model
from autolabel.control import RunControl
from autolabel.errors import EXIT_BAD_INPUT, EXIT_BUSY, EXIT_DIVERGED, EXIT_ERROR, EXIT_OK, BadInput, Diverged, Stopped
from autolabel.lock import FolderLock, LockBusy
from autolabel.losses import combined_loss, dice_counts, dice_score
from autolabel.model import ModelError, build_model, count_parameters, find_weights
from autolabel.options import CellMetrics, CellOptions, Plan, RepeatResult, Round, RoundResult
from autolabel.state import Data, Progress, configure_device, device_name, load_data, pick_device
from autolabel.step import GATE, TrainStep, autocast

# Validation runs without gradients, so bigger batches are cheap; the Dice loss is per image either way.
EVAL_BATCH = 32
TABLE_HEADER = (
    "repeat round epoch        lr batch train_loss train_dice  val_loss  val_dice mean_dice seconds"
)


# ----------------------------------------------------------------------------- model and optimizer


def seed_for(*parts: int) -> int:
    """A well-mixed 63-bit seed from small integers (cell seed, repeat, round, epoch)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, np.uint64)[0] >> np.uint64(1))


def new_model(options: CellOptions, data: Data, device: torch.device, repeat: int, init_lock) -> torch.nn.Module:
    """A fresh initialisation for ``repeat``, seeded from the cell seed and the repeat (under ``init_lock``)."""
    with init_lock:
        torch.manual_seed(seed_for(options.seed, repeat))
        model = build_model(options.base_model, len(data.channels), len(data.labels), pretrained=options.pretrained)
    memory = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    return model.to(device=device, memory_format=memory)


def new_optimizer(model: torch.nn.Module, rnd: Round) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.StepLR]:
    """Adam at the round's lr and a StepLR that multiplies it by gamma after every epoch.

    On CUDA: fused (one kernel for the whole update) and capturable, with the lr a device
    tensor that StepLR fills in place, so a CUDA graph of the step sees every new lr.
    """
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    lr = torch.tensor(rnd.lr, device=device) if cuda else rnd.lr
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=cuda, capturable=cuda)
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=rnd.gamma)


def restart_optimizer(optimizer: torch.optim.Adam, rnd: Round) -> torch.optim.lr_scheduler.StepLR:
    """The optimizer as :func:`new_optimizer` would make it for ``rnd``, but in place.

    Zero moments and step count are what a fresh Adam starts from; keeping the tensors
    keeps a CUDA graph of the step valid.
    """
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(rnd.lr)
        else:
            group["lr"] = rnd.lr
        group.pop("initial_lr", None)  # the new scheduler starts from this lr
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                value.zero_()
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=rnd.gamma)


# ----------------------------------------------------------------------------- one epoch


def train_one_epoch(step: TrainStep, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """One pass over the training images in seeded random order; mean (bce, dice, loss) as a tensor.

    Losses are summed on the device and never read inside the loop: reading one
    would make the CPU wait for the GPU at every step.
    """
    step.model.train()
    n = len(step.x)
    order = torch.randperm(n, generator=generator).to(step.x.device)
    # BatchNorm cannot train on one image: a final batch of one is left out of this epoch (a
    # different image each epoch, since the order is reshuffled). n == 1 is refused as bad input.
    used = n - 1 if n > 1 and n % batch_size == 1 else n
    step.sums.zero_()
    for start in range(0, used, batch_size):
        step(order[start : min(start + batch_size, used)])
    return step.sums / used


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Data, bce_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Validation mean (bce, dice, loss) and per-label Dice scores, as tensors (no host sync)."""
    model.eval()
    n = len(data.x_val)
    sums = torch.zeros(3, device=data.x_val.device)
    overlap = total = torch.zeros(len(data.labels), device=data.x_val.device)
    for start in range(0, n, EVAL_BATCH):
        x, y = data.x_val[start : start + EVAL_BATCH], data.y_val[start : start + EVAL_BATCH]
        with autocast(x.device):
            logits = model(x)
        loss, bce, dice = combined_loss(logits, y, bce_weight)
        sums += torch.stack([bce, dice, loss]) * len(x)
        o, t = dice_counts(logits.float(), y)
        overlap, total = overlap + o, total + t
    return sums / n, dice_score(overlap, total)


def run_epoch(step: TrainStep, scheduler, data: Data, options: CellOptions, rnd: Round, progress: Progress) -> dict:
    """Train and validate one epoch; returns its history row (one host sync, at the end)."""
    started = time.perf_counter()
    batch_size = rnd.batch_size or options.batch_size
    generator = torch.Generator().manual_seed(seed_for(options.seed, progress.repeat, progress.round, progress.epoch))
    lr = float(scheduler.get_last_lr()[0])  # a device tensor on CUDA (see new_optimizer)
    # Two CPU-GPU sync points per epoch (reading the losses), none inside a step.
    train = train_one_epoch(step, batch_size, generator).tolist()
    train_done = time.perf_counter()
    val, dice = evaluate(step.model, data, rnd.bce_weight)
    values = train + torch.cat([val, dice]).tolist()
    scheduler.step()
    progress.train_images += len(data.x_train)
    progress.train_seconds += train_done - started
    row = dict(zip(HISTORY_COLUMNS[5:11], values[:6]))
    row = {"repeat": progress.repeat, "round": progress.round, "epoch": progress.epoch + 1, "lr": lr,
           "batch_size": batch_size, **row, "val_mean_dice": float(np.mean(values[6:])),
           "seconds": time.perf_counter() - started}  # fmt: skip
    row["dice"] = values[6:]  # per label; kept out of history.csv, used for the best epoch
    return row


def format_row(row: dict) -> str:
    """One epoch as a line of training.log, under TABLE_HEADER."""
    return (
        f"{row['repeat']:>6} {row['round']:>5} {row['epoch']:>5} {row['lr']:>9.6f} {row['batch_size']:>5} "
        f"{row['train_loss']:>10.4f} {row['train_dice']:>10.4f} {row['val_loss']:>9.4f} "
        f"{row['val_dice']:>9.4f} {row['val_mean_dice']:>9.4f} {row['seconds']:>7.2f}"
    )


# ----------------------------------------------------------------------------- rounds and repeats


def record_epoch(model: torch.nn.Module, progress: Progress, row: dict) -> None:
    """Keep the row; remember the weights if this is the round's best epoch by validation loss."""
    progress.rows.append({k: row[k] for k in HISTORY_COLUMNS})
    progress.epoch += 1
    best = progress.round_best
    if best is None or row["val_loss"] < best["val_loss"]:
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        progress.round_best = {"epoch": progress.epoch, "val_loss": row["val_loss"],
                               "val_dice_loss": row["val_dice"], "dice": row["dice"], "state": state}  # fmt: skip


def finish_round(model: torch.nn.Module, progress: Progress, plan: Plan) -> None:
    """Load the round's best weights (the next round starts from them) and rank the round."""
    best = progress.round_best
    model.load_state_dict(best["state"])
    progress.rounds.append(
        RoundResult(repeat=progress.repeat, round=progress.round, best_epoch=best["epoch"],
                    val_loss=best["val_loss"], val_dice_loss=best["val_dice_loss"]).model_dump()  # fmt: skip
    )
    # The dicts share their "state" tensors, and torch.save stores shared tensors once.
    if progress.repeat_best is None or best["val_dice_loss"] < progress.repeat_best["val_dice_loss"]:
        progress.repeat_best = best | {"round": progress.round}
    progress.round_best, progress.round, progress.epoch = None, progress.round + 1, 0
    if progress.round == len(plan):
        finish_repeat(progress)


def finish_repeat(progress: Progress) -> None:
    """Rank the repeat by its best round's validation Dice loss and start the next one."""
    best = progress.repeat_best
    progress.repeats.append(
        RepeatResult(repeat=progress.repeat, best_round=best["round"], val_dice_loss=best["val_dice_loss"]).model_dump()
    )
    if progress.best is None or best["val_dice_loss"] < progress.best["val_dice_loss"]:
        progress.best = best | {"repeat": progress.repeat}
    progress.repeat_best, progress.repeat, progress.round = None, progress.repeat + 1, 0


def final_metrics(progress: Progress, data: Data, device: torch.device, status: str, message: str = "") -> CellMetrics:
    """CellMetrics from the progress so far; the best fields only once a repeat has finished."""
    best = progress.best
    dice = dict(zip(data.labels, best["dice"])) if best else {}
    return CellMetrics(
        status=status,
        message=message,
        best_val_dice_loss=best["val_dice_loss"] if best else None,
        dice=dice,
        mean_dice=float(np.mean(list(dice.values()))) if dice else None,
        rounds=progress.rounds,
        repeats=progress.repeats,
        best_repeat=best["repeat"] if best else None,
        best_round=best["round"] if best else None,
        best_epoch=best["epoch"] if best else None,
        epochs=len(progress.rows),
        wall_seconds=round(progress.wall_seconds, 3),
        device=device_name(device),
        train_images=progress.train_images,
        train_images_per_second=progress.train_images / progress.train_seconds if progress.train_seconds else 0.0,
        train_subjects=len(data.x_train),
        validation_subjects=len(data.x_val),
    )


# ----------------------------------------------------------------------------- the cell


def describe_run(cell: CellDir, options: CellOptions, plan: Plan, data: Data, device: torch.device) -> list[str]:
    """The first lines of training.log: what is trained, on what, where."""
    return [
        f"cell {cell.uri}",
        f"device {device_name(device)}",
        f"data {len(data.x_train)} train / {len(data.x_val)} validation subjects, inputs {options.inputs} "
        f"({len(data.channels)} channels), prediction {options.prediction} ({' '.join(data.labels)}), "
        f"images {tuple(data.x_train.shape[-2:])}",
        f"plan {len(plan)} rounds x until {options.until}, base model {options.base_model}"
        f"{' (ImageNet)' if options.pretrained else ''}",
    ]


def end_diverged(cell: CellDir, progress: Progress, row: dict, data: Data, device: torch.device, log: Callable) -> None:
    """Record the diverged epoch in history, training.log and metrics.json, then raise Diverged.

    The checkpoint keeps the last epoch it saved, never the diverged one: a rerun resumes there.
    """
    message = (f"loss became {row['train_loss']} (train) / {row['val_loss']} (validation) at repeat "
               f"{progress.repeat} round {progress.round} epoch {progress.epoch + 1}; lower the lr")  # fmt: skip
    progress.rows.append({k: row[k] for k in HISTORY_COLUMNS})
    log(format_row(row))
    log(f"diverged: {message}")
    write_history(cell, progress.rows, progress.log)
    push(cell, [HISTORY, LOG], GATE.idle)
    write_metrics(cell, final_metrics(progress, data, device, "diverged", message))
    raise Diverged(message)


def train_cell(
    cell: CellDir, control: RunControl, force: bool = False, device_override: str | None = None,
    say: Callable[[str], None] = print,
) -> CellMetrics:  # fmt: skip
    """Train one cell in ``cell.work`` (resuming from its checkpoint) and return its metrics.

    Raises BadInput before any training for unusable inputs, Diverged (with the
    metrics so far already written) when a loss becomes NaN or infinite, and Stopped
    after the checkpoint of the epoch in progress once ``control`` asks to stop.
    """
    # 1. Inputs, device, pretrained weights: everything that can be wrong fails here, before any work.
    options, plan = load_cell(cell)
    device = pick_device(device_override or options.device, cell.name(OPTIONS))
    if options.pretrained:
        try:
            find_weights(options.base_model)
        except ModelError as e:
            raise BadInput(f"{cell.name(OPTIONS)}: {e}") from None
    configure_device(device)
    data = load_data(options, device, cell.name(OPTIONS), control)
    ckpt = None if force else load_checkpoint(cell, options, plan)
    progress = Progress(**ckpt["progress"]) if ckpt else Progress()
    wall_before, started = progress.wall_seconds, time.perf_counter()

    def log(line: str) -> None:
        progress.log.append(line)
        say(line)

    # 2. Resume exactly where the checkpoint stopped, or introduce the run.
    model = optimizer = scheduler = step = None
    if ckpt and progress.repeat < options.until:
        model = new_model(options, data, device, progress.repeat, control.init_lock)
        if progress.epoch:  # mid-round: the round's optimizer and scheduler go on
            optimizer, scheduler = new_optimizer(model, plan[progress.round])
        restore(ckpt, model, optimizer, scheduler, device, control.init_lock)
        log(f"resumed from {CHECKPOINT} at repeat {progress.repeat} round {progress.round} epoch {progress.epoch + 1}")
    elif not ckpt:
        for line in describe_run(cell, options, plan, data, device):
            log(line)

    # 3. Repeats x rounds x epochs; a checkpoint after an epoch once `interval` seconds have
    # passed since the last one (0: every epoch), and always when a stop was asked for.
    interval, last_checkpoint = control.checkpoint_interval(), time.monotonic()
    while progress.repeat < options.until:
        rnd = plan[progress.round]
        # A new repeat's weights and a new round's optimizer go into the same tensors in place,
        # so the step recorded as a CUDA graph once serves the whole run (autolabel/step.py).
        if progress.epoch == 0:
            if progress.round == 0:
                fresh = new_model(options, data, device, progress.repeat, control.init_lock)
                if model is None:
                    model = fresh
                else:
                    model.load_state_dict(fresh.state_dict())
                if progress.repeat == 0:
                    log(f"model {count_parameters(model):,} parameters")
                    log(TABLE_HEADER)
            if optimizer is None:
                optimizer, scheduler = new_optimizer(model, rnd)
            else:
                scheduler = restart_optimizer(optimizer, rnd)
        if step is None:
            step = TrainStep(model, optimizer, data.x_train, data.y_train, rnd.bce_weight, graphs=control.graphs)
        step.set_bce_weight(rnd.bce_weight)
        row = run_epoch(step, scheduler, data, options, rnd, progress)
        if not all(np.isfinite(row[k]) for k in ("train_loss", "val_loss")):
            progress.wall_seconds = wall_before + time.perf_counter() - started
            end_diverged(cell, progress, row, data, device, log)
        record_epoch(model, progress, row)
        log(format_row(row))
        if progress.epoch == rnd.num_epochs:
            finish_round(model, progress, plan)
        progress.wall_seconds = wall_before + time.perf_counter() - started
        # One look at the stop flag per epoch: a signal that lands after it (while this epoch's
        # files are written) is seen after the next epoch, which then checkpoints. Reading the
        # flag twice would stop here without the checkpoint the message promises.
        stopping = control.stop_requested
        due = stopping or time.monotonic() - last_checkpoint >= interval
        if due:  # before history.csv: with a checkpoint every epoch, a row on disk is a saved epoch
            save_checkpoint(cell, model, optimizer, scheduler, progress, options, plan)
            last_checkpoint = time.monotonic()
        write_history(cell, progress.rows, progress.log)
        if due:
            push(cell, [CHECKPOINT, HISTORY, LOG], GATE.idle)
        if stopping and progress.repeat < options.until:
            raise Stopped(f"stopped by {control.stop_reason} after repeat {progress.repeat} round {progress.round} "
                          f"epoch {progress.epoch}; {CHECKPOINT} is saved, rerun to resume")  # fmt: skip

    # 4. Results: model.pt, then metrics.json last.
    best = progress.best
    scores = " ".join(f"{n} {d:.3f}" for n, d in zip(data.labels, best["dice"]))
    log(f"best repeat {best['repeat']} round {best['round']} epoch {best['epoch']}: "
        f"validation Dice loss {best['val_dice_loss']:.4f}, Dice {scores}")  # fmt: skip
    progress.wall_seconds = wall_before + time.perf_counter() - started
    write_history(cell, progress.rows, progress.log)
    save_model(cell, progress, data, options, plan)
    push(cell, [MODEL, HISTORY, LOG], GATE.idle)
    metrics = final_metrics(progress, data, device, "complete")
    write_metrics(cell, metrics)
    # model.pt holds the result; the checkpoint (hundreds of MB) would only cost storage now.
    delete(cell, CHECKPOINT)
    return metrics


def run_cell(
    uri: str, control: RunControl, force: bool = False, device: str | None = None, say: Callable[[str], None] = print
) -> int:
    """Train one cell and turn the outcome into an exit code; never raises.

    A local cell is trained under its folder's lock (autolabel.lock): a second trainer of the
    same cell (a rerun racing a dying one, two flows) exits 75 at once without touching it.
    An s3:// cell is guarded by its grid's lock and the ECS runner's adoption of running tasks.
    """
    lock = FolderLock(uri) if not storage.is_s3(uri) and Path(uri).is_dir() else None
    try:
        if lock is not None:
            lock.acquire()
    except LockBusy as e:
        print(e, file=sys.stderr, flush=True)
        return EXIT_BUSY
    except OSError as e:  # an unwritable cell folder
        print(f"{uri}: cannot lock the cell folder ({e.strerror or e}); make it writable", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    try:
        return train_opened(uri, control, force, device, say)
    finally:
        if lock is not None:
            lock.release()


def train_opened(uri: str, control: RunControl, force: bool, device: str | None, say: Callable[[str], None]) -> int:
    """run_cell once the cell is ours: open it, train it, map the outcome to an exit code."""
    try:
        with open_cell(uri, force, GATE.idle) as cell:
            if is_complete(cell.work) and not force:
                say(f"{cell.uri}: complete, skipped (rerun with --force to train again)")
                return EXIT_OK
            if (cell.work / METRICS).exists():  # a stale failed/diverged result must not outlive this run
                delete(cell, METRICS)
            try:
                train_cell(cell, control, force, device, say)
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
    except storage.StorageError as e:
        print(e, file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    except Exception:  # noqa: BLE001 - one broken cell must not stop the others
        print(f"{uri}: unexpected error, the traceback follows", file=sys.stderr)
        traceback.print_exc()
        sys.stderr.flush()
        return EXIT_ERROR
