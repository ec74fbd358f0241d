"""The method, one epoch at a time: model and optimizer, the epoch, validation, rounds and repeats.

The stages that train a cell from its folder call these (autolabel/cell.py). The method is the
published one (Benson, Song et al. 2025): Adam, StepLR once per epoch, loss w*BCE + (1-w)*Dice;
each round continues from the previous round's best epoch; the best epoch of a round is chosen
by validation loss, the best round of a repeat and the best repeat by validation Dice loss. Each
epoch's data order comes from a generator seeded by (seed, repeat, round, epoch), so a resumed
run sees the same batches. There is no flip augmentation: the images
are LH | RH, and a flip would swap the hemispheres.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from autolabel.adam import fused_adam
from autolabel.celldir import HISTORY_COLUMNS
from autolabel.losses import combined_loss, dice_counts, dice_score
from autolabel.model import build_model
from autolabel.options import (
    CellMetrics,
    CellOptions,
    Plan,
    RepeatResult,
    Round,
    RoundResult,
)
from autolabel.state import Data, Progress, device_name
from autolabel.step import TrainStep, autocast

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

    Fused (one kernel for the whole update) where :func:`fused_adam` says so. On CUDA also
    capturable, with the lr a device tensor that StepLR fills in place, so a CUDA graph of the
    step sees every new lr. A checkpoint keeps the flags it was made
    with: a run resumed from an older checkpoint steps as it began.
    """
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    lr = torch.tensor(rnd.lr, device=device) if cuda else rnd.lr
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=fused_adam(device), capturable=cuda)
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


def epoch_generator(options: CellOptions, progress: Progress) -> torch.Generator:
    """The generator of this epoch's data order, seeded by (cell seed, repeat, round, epoch): a resumed
    run, and the same cell in a fused pack, sees the same batches."""
    return torch.Generator().manual_seed(seed_for(options.seed, progress.repeat, progress.round, progress.epoch))


def train_one_epoch(step: TrainStep, batch_size: int, generator: torch.Generator | list[torch.Generator]) -> torch.Tensor:
    """One pass over the training images in seeded random order; mean (bce, dice, loss) as a tensor.

    A fused pack passes one generator per cell: each cell gets its own order of the shared
    images (a row of the batch index each) and its own row of means.
    Losses are summed on the device and never read inside the loop: reading one
    would make the CPU wait for the GPU at every step.
    """
    step.model.train()
    n = len(step.x)
    generators = generator if isinstance(generator, list) else [generator]
    order = torch.stack([torch.randperm(n, generator=g) for g in generators]).to(step.x.device)
    if not isinstance(generator, list):
        order = order[0]
    # BatchNorm cannot train on one image: a final batch of one is left out of this epoch (a
    # different image each epoch, since the order is reshuffled). n == 1 is refused as bad input.
    used = n - 1 if n > 1 and n % batch_size == 1 else n
    step.sums.zero_()
    for start in range(0, used, batch_size):
        step(order[..., start : min(start + batch_size, used)])
    return step.sums / used


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Data, bce_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Validation mean (bce, dice, loss) and per-label Dice scores, as tensors (no host sync)."""
    model.eval()
    return validation_scores(model, data, bce_weight)


def validation_scores(forward, data: Data, bce_weight, batch: int = EVAL_BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """What :func:`evaluate` returns, for ``forward(x) -> logits`` already in eval mode.

    Written out of place, so that a fused pack can vmap it over its cells (autolabel/fused.py).
    """
    n = len(data.x_val)
    sums = torch.zeros(3, device=data.x_val.device)
    overlap = total = torch.zeros(len(data.labels), device=data.x_val.device)
    for start in range(0, n, batch):
        x, y = data.x_val[start : start + batch], data.y_val[start : start + batch]
        with autocast(x.device):
            logits = forward(x)
        loss, bce, dice = combined_loss(logits, y, bce_weight)
        sums = sums + torch.stack([bce, dice, loss]) * len(x)
        o, t = dice_counts(logits.float(), y)
        overlap, total = overlap + o, total + t
    return sums / n, dice_score(overlap, total)


def run_epoch(step: TrainStep, scheduler, data: Data, options: CellOptions, rnd: Round, progress: Progress) -> dict:
    """Train and validate one epoch; returns its history row (one host sync, at the end)."""
    started = time.perf_counter()
    batch_size = rnd.batch_size or options.batch_size
    lr = float(scheduler.get_last_lr()[0])  # a device tensor on CUDA (see new_optimizer)
    # Two CPU-GPU sync points per epoch (reading the losses), none inside a step.
    train = train_one_epoch(step, batch_size, epoch_generator(options, progress)).tolist()
    train_done = time.perf_counter()
    val, dice = evaluate(step.model, data, rnd.bce_weight)
    values = train + torch.cat([val, dice]).tolist()
    return epoch_row(progress, scheduler, len(data.x_train), lr, batch_size, values, started, train_done)


def epoch_row(progress: Progress, scheduler, train_images: int, lr: float, batch_size: int, values: list[float],
              started: float, train_done: float) -> dict:  # fmt: skip
    """After an epoch's numbers are in: the scheduler's step, the progress counters, the history row.

    ``values``: train (bce, dice, loss), validation (bce, dice, loss), then Dice per label.
    """
    scheduler.step()
    progress.train_images += train_images
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


def diverged(row: dict) -> bool:
    """Whether an epoch's training or validation loss became NaN or infinite."""
    return not all(np.isfinite(row[k]) for k in ("train_loss", "val_loss"))


def history_row(row: dict) -> dict:
    """An epoch's row as history.csv holds it (the per-label Dice stays out)."""
    return {k: row[k] for k in HISTORY_COLUMNS}


def record_epoch(model: torch.nn.Module, progress: Progress, row: dict) -> None:
    """Keep the row; remember the weights if this is the round's best epoch by validation loss."""
    progress.rows.append(history_row(row))
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
