"""Train grid cells from their directories: the entry point of the training image.

    python -m autolabel.train CELL_DIR [CELL_DIR ...] [--force] [--device cpu|cuda|mps|auto]
                              [--threads K] [--workers N] [--eager]

A cell directory (local folder or ``s3://bucket/prefix``) holds ``options.json``
(:class:`autolabel.options.CellOptions`) and ``plan.json`` (:class:`autolabel.options.Plan`).
Training writes into it: ``history.csv`` and ``training.log`` after every epoch,
``checkpoint.pt`` after an epoch once ``--checkpoint-every`` seconds (default 60; 0: every
epoch; or $AUTOLABEL_CHECKPOINT_EVERY_S) have passed and whenever SIGTERM stops training,
then ``model.pt`` and, last and atomically, ``metrics.json``.
A cell whose metrics.json says ``complete`` is skipped unless ``--force``; any
other cell resumes from its checkpoint exactly (same epoch, optimizer, scheduler, RNG).

A tiny CPU run (a few seconds after the synthetic cohort is generated once into $AUTOLABEL_CACHE):

    mkdir -p /tmp/cell
    echo '{"device": "cpu", "dataset": {"kind": "synthetic", "subjects": 12, "rows": 32, "cols": 64}}' > /tmp/cell/options.json
    echo '[{"lr": 0.003, "bce_weight": 0.75, "num_epochs": 2}, {"lr": 0.002, "bce_weight": 0.375, "num_epochs": 2}]' > /tmp/cell/plan.json
    python -m autolabel.train /tmp/cell && cat /tmp/cell/metrics.json

A remote cell (any S3-compatible endpoint; credentials from boto3's default chain):

    AWS_ENDPOINT_URL=http://localhost:5000 python -m autolabel.train s3://bucket/grid/cell-0001

Exit codes: 0 every cell complete (or skipped as complete); 1 an unexpected error in
some cell (traceback printed; the flow does not retry it, a rerun skips complete cells); 2 bad input (options, plan,
dataset: fix it); 3 a cell diverged (NaN/inf loss); 143 stopped by SIGTERM after
checkpointing the epoch in progress (a rerun resumes; a second SIGTERM kills at once).
With several cells the worst wins, in the order 143, 1, 2, 3; every cell is attempted
regardless of the others (unless stopped).

Several cells train side by side. On CUDA, by default, all of them in this process, 16 at
a time, each in a thread with its own CUDA stream, its steps replayed from CUDA graphs
(autolabel/step.py, autolabel/pack.py): on one H200 this ran 16 mixed cells at 1450
images/s against 684 for 16 eager processes. ``--threads K`` sets the cells per process,
``--workers N`` the processes (``--workers N`` alone: one cell per process), ``--eager``
turns the graphs off. Elsewhere the default is one cell after another. A worker process
killed by a signal makes the pack exit 128+signal, so a retry resumes it.

The method is the published one (Benson, Song et al. 2025; REFERENCE.md): Adam,
StepLR once per epoch, loss w*BCE + (1-w)*Dice; each round continues from the
previous round's best epoch; the best epoch of a round is chosen by validation
loss, the best round of a repeat and the best repeat by validation Dice loss.
Each epoch's data order comes from a generator seeded by (seed, repeat, round,
epoch), so a resumed run sees the same batches. There is no flip augmentation:
the images are LH | RH, and a flip would swap the hemispheres.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from pydantic import ValidationError

from autolabel import storage
from autolabel.celldir import (
    CHECKPOINT,
    HISTORY,
    LOG,
    METRICS,
    MODEL,
    OPTIONS,
    PLAN,
    is_complete,
    write_atomic,
    write_json_atomic,
)
from autolabel.data import INPUT_SETS, LABELS, DatasetError, open_dataset, split_subjects
from autolabel.losses import combined_loss, dice_counts, dice_score
from autolabel.model import ModelError, build_model, count_parameters, find_weights
from autolabel.errors import (
    EXIT_BAD_INPUT,
    EXIT_DIVERGED,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_TERMINATED,
    BadInput,
    Diverged,
    Stopped,
    worst,
)
from autolabel.options import (
    CellMetrics,
    CellOptions,
    Plan,
    RepeatResult,
    Round,
    RoundResult,
)
from autolabel.step import GATE, TrainStep, autocast

CHECKPOINT_FORMAT = 1
HISTORY_COLUMNS = (
    "repeat", "round", "epoch", "lr", "batch_size", "train_bce", "train_dice", "train_loss",
    "val_bce", "val_dice", "val_loss", "val_mean_dice", "seconds",
)  # fmt: skip
# Validation runs without gradients, so bigger batches are cheap; the Dice loss is per image either way.
EVAL_BATCH = 32


# Set by the SIGTERM handler (see main); read between epochs. ECS sends SIGTERM, then SIGKILL
# 30 s later (a spot notice gives 2 minutes): time enough to finish a GPU epoch of one cell.
stop_requested = False
stop_reason = "SIGTERM"  # what asked: named in the message of a stopped cell
# CUDA graphs for the training step on CUDA (autolabel/step.py); --eager turns them off.
use_graphs = True
# Seconds between checkpoints, 0 for after every epoch: --checkpoint-every, else the variable
# below, else the default. A graphed GPU epoch takes about a second and a checkpoint holds
# 200-450 MB (weights, Adam moments, best weights), so one per epoch would cost more than the
# training; SIGTERM (ECS stop, spot notice) always checkpoints the epoch in progress first.
checkpoint_every_s: float | None = None
CHECKPOINT_ENV = "AUTOLABEL_CHECKPOINT_EVERY_S"
DEFAULT_CHECKPOINT_EVERY_S = 60.0
# Model initialisation seeds the process-wide RNG: cells in threads take turns (autolabel/pack.py).
INIT_LOCK = threading.Lock()


@dataclass
class Cell:
    """A cell as given on the command line (``uri``) and the local folder training writes in."""

    uri: str
    work: Path

    @property
    def remote(self) -> bool:
        return storage.is_s3(self.uri)

    def name(self, file: str) -> str:
        """A file of the cell as the user knows it (local path or s3 URI), for messages."""
        return storage.join(self.uri, file) if self.remote else str(self.work / file)


@dataclass
class Data:
    """Standardised training and validation tensors, already on the training device."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    mean: torch.Tensor  # per-channel training-set mean (saved in model.pt)
    std: torch.Tensor
    channels: tuple[str, ...]
    labels: tuple[str, ...]


@dataclass
class Progress:
    """Where training stands; saved whole in every checkpoint so a rerun continues exactly here."""

    repeat: int = 0  # 0-based repeat of the plan (one fresh initialisation each)
    round: int = 0  # 0-based round of the plan
    epoch: int = 0  # epochs finished in this round
    rows: list[dict] = field(default_factory=list)  # history.csv, one row per epoch
    log: list[str] = field(default_factory=list)  # training.log lines
    round_best: dict | None = None  # best epoch of this round by validation loss, with its weights
    repeat_best: dict | None = None  # best round of this repeat by validation Dice loss
    best: dict | None = None  # best repeat so far by validation Dice loss
    rounds: list[dict] = field(default_factory=list)  # RoundResult of every finished round
    repeats: list[dict] = field(default_factory=list)  # RepeatResult of every finished repeat
    train_images: int = 0
    train_seconds: float = 0.0
    wall_seconds: float = 0.0  # summed over every run of this cell, resumed ones included


# ----------------------------------------------------------------------------- loading the cell


def parse_seconds(raw: str, shown: str) -> float:
    """A non-negative finite number of seconds, or BadInput naming where it came from."""
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value) or value < 0:
        raise BadInput(f"{shown}: expected seconds >= 0, got {raw!r}")
    return value


def checkpoint_interval() -> float:
    """Seconds between checkpoints for this run (see ``checkpoint_every_s``)."""
    if checkpoint_every_s is not None:
        return checkpoint_every_s
    raw = os.environ.get(CHECKPOINT_ENV, "")
    return parse_seconds(raw, f"${CHECKPOINT_ENV}") if raw else DEFAULT_CHECKPOINT_EVERY_S


def read_json_file(path: Path, shown: str) -> Any:
    """Parse one JSON input; a missing file or a syntax error becomes a one-line BadInput."""
    if not path.is_file():
        raise BadInput(f"{shown}: not found; a cell directory needs {OPTIONS} and {PLAN}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BadInput(f"{shown}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"{shown}: unreadable ({e})") from None


def field_path(loc: tuple, raw: Any) -> str:
    """``('partition', 'function-after[...]', 'train')`` -> ``partition.train``; ``(0, 'lr')`` -> ``[0].lr``.

    The location is walked through the raw JSON: a part that is not a key (or index)
    there is a union branch tag (``ExplicitPartition``, ``synthetic``) and is dropped.
    """
    path = ""
    for part in loc:
        if isinstance(raw, list) and isinstance(part, int) and 0 <= part < len(raw):
            path, raw = path + f"[{part}]", raw[part]
        elif isinstance(raw, dict) and part in raw:
            path, raw = (f"{path}.{part}" if path else str(part)), raw[part]
    return path


def format_validation_error(shown: str, raw: Any, err: ValidationError) -> str:
    """``file: field.path: problem (got value)`` lines, one per pydantic error.

    Where a union's branches disagree, the branch that got the input's type right
    speaks: ``{"train": []}`` is clearly meant as an explicit partition, not a float.
    """
    errors = []
    for e in err.errors():
        path = field_path(e["loc"], raw)
        if e["type"] == "missing":  # the last part is the absent field itself
            path = f"{path}.{e['loc'][-1]}" if path else str(e["loc"][-1])
        errors.append((path, e))
    paths = {p for p, _ in errors}
    specific = {p for p, e in errors if not e["type"].endswith(("_type", "_parsing"))}
    lines: list[str] = []
    for path, e in errors:
        deeper = any(other.startswith(path + ".") or (not path and other) for other in paths if other != path)
        if deeper or (path in specific and e["type"].endswith(("_type", "_parsing"))):
            continue
        got = e.get("input")
        scalar = isinstance(got, (str, int, float, bool)) or got is None
        shown_input = f" (got {got!r})" if scalar and str(got) not in e["msg"] else ""
        line = f"{shown}: {path or '(top level)'}: {e['msg']}{shown_input}"
        if line not in lines:
            lines.append(line)
    return "\n".join(lines)


def load_cell(cell: Cell) -> tuple[CellOptions, Plan]:
    """options.json and plan.json, validated by the same models the grid spec uses."""
    parsed = []
    for file, model in ((OPTIONS, CellOptions), (PLAN, Plan)):
        raw = read_json_file(cell.work / file, cell.name(file))
        try:
            parsed.append(model.model_validate(raw))
        except ValidationError as e:
            raise BadInput(format_validation_error(cell.name(file), raw, e)) from None
    return parsed[0], parsed[1]


def pick_device(name: str, shown: str) -> torch.device:
    """``auto`` -> cuda, then mps, then cpu; an explicit device must exist here."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise BadInput(f"{shown}: device: {name} is not available on this machine; use auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise BadInput(f"{shown}: device: mps is not available on this machine; use auto or cpu")
    return device


def configure_device(device: torch.device) -> None:
    """All CPU cores unless OMP_NUM_THREADS says otherwise; fast cuDNN choices on CUDA."""
    if device.type == "cpu":
        # The local runner sets OMP_NUM_THREADS when it runs cells side by side: more
        # threads than free cores makes OpenMP spin and can be several times slower.
        threads = os.environ.get("OMP_NUM_THREADS", "")
        torch.set_num_threads(int(threads) if threads.isdigit() and int(threads) > 0 else len(os.sched_getaffinity(0)))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one image size per cell: the search pays off at once


# ----------------------------------------------------------------------------- loading the data


def standardise(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of the training features; a constant channel gets std 1."""
    mean = x_train.mean(axis=(0, 2, 3), dtype=np.float64)
    std = x_train.std(axis=(0, 2, 3), dtype=np.float64)
    return mean.astype(np.float32), np.where(std > 1e-6, std, 1.0).astype(np.float32)


# Cells trained in threads of one process (autolabel/pack.py) share their tensors when they
# read the same data: this dict is set there, keyed by what decides the tensors.
shared_data: dict[str, Data] | None = None
DATA_LOCK = threading.Lock()


def load_data(options: CellOptions, device: torch.device, shown: str) -> Data:
    """The cell's data on the device: loaded here, or the shared copy of an identical one."""
    if shared_data is None:
        return read_data(options, device, shown)
    fields = options.model_dump(mode="json", include={"dataset", "partition", "inputs", "prediction", "image_size"})
    key = json.dumps([fields, str(device)], sort_keys=True)
    with DATA_LOCK:  # one thread reads it; the others with the same key wait for it
        if key not in shared_data:
            shared_data[key] = read_data(options, device, shown)
        return shared_data[key]


def read_data(options: CellOptions, device: torch.device, shown: str) -> Data:
    """Open the dataset, split it, standardise with training-set statistics, move it to the device."""
    try:
        cohort = open_dataset(options.dataset)
        train_ids, val_ids = split_subjects(cohort.subjects, options.partition)
        x_tr, y_tr = cohort.arrays(train_ids, options.inputs, options.prediction, options.image_size, normalize=False)
        x_va, y_va = cohort.arrays(val_ids, options.inputs, options.prediction, options.image_size, normalize=False)
    except DatasetError as e:
        # Messages about the cell's own fields (partition, inputs, dataset) get the file name.
        msg = str(e)
        raise BadInput(f"{shown}: {msg}" if msg.startswith(("partition", "inputs", "dataset")) else msg) from None
    if not len(train_ids) or not len(val_ids):
        raise BadInput(f"{shown}: partition: the training and validation sets must both be non-empty")
    for name, x in (("training", x_tr), ("validation", x_va)):
        if not np.isfinite(x).all():
            raise BadInput(f"{shown}: dataset: the {name} features contain NaN or infinite values; fix the dataset")
    mean, std = standardise(x_tr)
    # Everything lives on the device for the whole run: no host-to-device copies inside a step.
    memory = torch.channels_last if device.type == "cuda" else torch.contiguous_format

    def to_device(a: np.ndarray, scaled: bool = False) -> torch.Tensor:
        if scaled:
            a = (a - mean[None, :, None, None]) / std[None, :, None, None]
        return torch.from_numpy(np.ascontiguousarray(a)).to(device).contiguous(memory_format=memory)

    data = Data(
        x_train=to_device(x_tr, scaled=True),
        y_train=to_device(y_tr),
        x_val=to_device(x_va, scaled=True),
        y_val=to_device(y_va),
        mean=torch.from_numpy(mean),
        std=torch.from_numpy(std),
        channels=INPUT_SETS[options.inputs],
        labels=LABELS[options.prediction],
    )
    if device.type == "cuda":  # copied on this thread's stream; other streams may read it next
        torch.cuda.current_stream(device).synchronize()
    return data


# ----------------------------------------------------------------------------- one epoch


def seed_for(*parts: int) -> int:
    """A well-mixed 63-bit seed from small integers (cell seed, repeat, round, epoch)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, np.uint64)[0] >> np.uint64(1))


def new_model(options: CellOptions, data: Data, device: torch.device, repeat: int) -> torch.nn.Module:
    """A fresh initialisation for ``repeat``, seeded from the cell seed and the repeat."""
    with INIT_LOCK:
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


def match_device(optimizer: torch.optim.Adam, device: torch.device) -> None:
    """After load_state_dict: the lr, flags and step counters as :func:`new_optimizer` makes them here.

    A state dict carries its groups' settings, so one saved on another device (or by an
    older version) would otherwise bring a float lr or a CPU step that a graph cannot use.
    """
    cuda = device.type == "cuda"
    for group in optimizer.param_groups:
        lr = float(group["lr"])
        group["lr"] = torch.tensor(lr, device=device) if cuda else lr
        group["fused"] = group["capturable"] = cuda
        group["foreach"] = None
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            if "step" in state:
                state["step"] = state["step"].to(device if cuda else "cpu", torch.float32)
            # Moments laid out like their parameter (channels_last on CUDA): fused Adam requires it,
            # and a state saved on CPU comes back contiguous.
            for key, value in state.items():
                if key != "step" and isinstance(value, torch.Tensor) and value.shape == param.shape:
                    state[key] = torch.empty_like(param).copy_(value)


def train_one_epoch(step: TrainStep, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """One pass over the training images in seeded random order; mean (bce, dice, loss) as a tensor.

    Losses are summed on the device and never read inside the loop: reading one
    would make the CPU wait for the GPU at every step.
    """
    step.model.train()
    n = len(step.x)
    order = torch.randperm(n, generator=generator).to(step.x.device)
    step.sums.zero_()
    for start in range(0, n, batch_size):
        step(order[start : start + batch_size])
    return step.sums / n


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


# ----------------------------------------------------------------------------- files


def save_checkpoint(
    cell: Cell, model, optimizer, scheduler, progress: Progress, options: CellOptions, plan: Plan
) -> None:
    """Everything a rerun needs to continue exactly after this epoch."""
    cuda = next(model.parameters()).device.type == "cuda"
    weights = model.state_dict()
    saved = dict(vars(progress))
    # Usually a best-so-far state equals the current weights; pointing it at them lets
    # torch.save store those tensors once, which keeps the checkpoint near 3x the model.
    for key in ("round_best", "repeat_best", "best"):
        if saved[key] is not None and same_weights(saved[key]["state"], weights):
            saved[key] = saved[key] | {"state": weights}
    state = {
        "format": CHECKPOINT_FORMAT,
        "options": options.model_dump(mode="json"),
        "plan": plan.model_dump(mode="json"),
        "progress": saved,
        "model": weights,
        # A new round starts with a new optimizer, so only a mid-round checkpoint needs one.
        "optimizer": optimizer.state_dict() if progress.epoch else None,
        "scheduler": scheduler.state_dict() if progress.epoch else None,
        "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if cuda else None},
    }
    write_atomic(cell.work / CHECKPOINT, lambda p: torch.save(state, p))


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a is b or all(torch.equal(a[k], b[k].to(a[k].device)) for k in b)


def load_checkpoint(cell: Cell, options: CellOptions, plan: Plan) -> dict | None:
    """The checkpoint if there is one for these very options and plan."""
    path = cell.work / CHECKPOINT
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        reason = type(e).__name__
        raise BadInput(f"{cell.name(CHECKPOINT)}: unreadable ({reason}); delete it or rerun with --force") from None
    if state.get("format") != CHECKPOINT_FORMAT:
        raise BadInput(f"{cell.name(CHECKPOINT)}: unknown format; delete it or rerun with --force")
    if state["options"] != options.model_dump(mode="json") or state["plan"] != plan.model_dump(mode="json"):
        raise BadInput(
            f"{cell.name(CHECKPOINT)}: written for different {OPTIONS}/{PLAN}; delete it or rerun with --force"
        )
    return state


def write_history(cell: Cell, progress: Progress) -> None:
    """history.csv and training.log, rewritten whole from the progress (no duplicate rows after a resume)."""

    def write_csv(p: Path) -> None:
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS)
            w.writeheader()
            w.writerows(progress.rows)

    write_atomic(cell.work / HISTORY, write_csv)
    write_atomic(cell.work / LOG, lambda p: p.write_text("".join(line + "\n" for line in progress.log)))


def save_model(cell: Cell, progress: Progress, data: Data, options: CellOptions, plan: Plan) -> None:
    """model.pt: the best weights and everything :func:`load_trained` needs to rebuild the model."""
    best = progress.best
    state = {
        "state_dict": {k: v.cpu().contiguous() for k, v in best["state"].items()},
        "base_model": options.base_model,
        "inputs": options.inputs,
        "prediction": options.prediction,
        "channels": list(data.channels),
        "labels": list(data.labels),
        "feature_mean": data.mean,
        "feature_std": data.std,
        "options": options.model_dump(mode="json"),
        "plan": plan.model_dump(mode="json"),
        "best": {k: best[k] for k in ("repeat", "round", "epoch", "val_loss", "val_dice_loss", "dice")},
    }
    write_atomic(cell.work / MODEL, lambda p: torch.save(state, p))


def load_trained(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild a trained model from model.pt; returns (model in eval mode, the rest of the file).

    Inputs must be standardised as in training: ``(x - feature_mean) / feature_std`` per channel.
    """
    info = torch.load(path, map_location=device, weights_only=True)
    model = build_model(info["base_model"], len(info["channels"]), len(info["labels"]))
    model.load_state_dict(info.pop("state_dict"))
    return model.to(device).eval(), info


def write_metrics(cell: Cell, metrics: CellMetrics) -> None:
    """metrics.json, atomically and last (uploaded last for a remote cell): its presence means done."""
    write_json_atomic(cell.work / METRICS, metrics.model_dump(mode="json"))
    if cell.remote:
        storage.upload_file(cell.work / METRICS, cell.name(METRICS))


def push(cell: Cell, names: list[str]) -> None:
    """Upload these files of a remote cell (a no-op for a local one)."""
    if not cell.remote:
        return
    with GATE.idle():  # no CUDA here: a graph capture in another thread need not wait for it
        for name in names:
            if (cell.work / name).is_file():
                storage.upload_file(cell.work / name, cell.name(name))


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


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)


# ----------------------------------------------------------------------------- the cell


def format_row(row: dict) -> str:
    return (
        f"{row['repeat']:>6} {row['round']:>5} {row['epoch']:>5} {row['lr']:>9.6f} {row['batch_size']:>5} "
        f"{row['train_loss']:>10.4f} {row['train_dice']:>10.4f} {row['val_loss']:>9.4f} "
        f"{row['val_dice']:>9.4f} {row['val_mean_dice']:>9.4f} {row['seconds']:>7.2f}"
    )


TABLE_HEADER = (
    "repeat round epoch        lr batch train_loss train_dice  val_loss  val_dice mean_dice seconds"
)


def train_cell(
    cell: Cell, force: bool = False, device_override: str | None = None, say: Callable[[str], None] = print
) -> CellMetrics:
    """Train one cell in ``cell.work`` (resuming from its checkpoint) and return its metrics.

    Raises BadInput before any training for unusable inputs, Diverged (with the
    metrics so far already written) when a loss becomes NaN or infinite, and Stopped
    after the checkpoint of the epoch in progress when SIGTERM asked (see request_stop).
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
    data = load_data(options, device, cell.name(OPTIONS))
    ckpt = None if force else load_checkpoint(cell, options, plan)
    progress = Progress(**ckpt["progress"]) if ckpt else Progress()
    wall_before, started = progress.wall_seconds, time.perf_counter()

    def log(line: str) -> None:
        progress.log.append(line)
        say(line)

    # 2. Resume exactly where the checkpoint stopped, or introduce the run.
    model = optimizer = scheduler = step = None
    if ckpt and progress.repeat < options.until:
        model, optimizer, scheduler = restore(ckpt, options, plan, data, device, progress)
        log(f"resumed from {CHECKPOINT} at repeat {progress.repeat} round {progress.round} epoch {progress.epoch + 1}")
    elif not ckpt:
        for line in describe_run(cell, options, plan, data, device):
            log(line)

    # 3. Repeats x rounds x epochs; a checkpoint after an epoch once `interval` seconds have
    # passed since the last one (0: every epoch), and always when SIGTERM asked to stop.
    interval, last_checkpoint = checkpoint_interval(), time.monotonic()
    while progress.repeat < options.until:
        rnd = plan[progress.round]
        # A new repeat's weights and a new round's optimizer go into the same tensors in place,
        # so the step recorded as a CUDA graph once serves the whole run (autolabel/step.py).
        if progress.epoch == 0:
            if progress.round == 0:
                fresh = new_model(options, data, device, progress.repeat)
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
            step = TrainStep(model, optimizer, data.x_train, data.y_train, rnd.bce_weight, graphs=use_graphs)
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
        due = stop_requested or time.monotonic() - last_checkpoint >= interval
        if due:  # before history.csv: with a checkpoint every epoch, a row on disk is a saved epoch
            save_checkpoint(cell, model, optimizer, scheduler, progress, options, plan)
            last_checkpoint = time.monotonic()
        write_history(cell, progress)
        if due:
            push(cell, [CHECKPOINT, HISTORY, LOG])
        if stop_requested and progress.repeat < options.until:
            raise Stopped(f"stopped by {stop_reason} after repeat {progress.repeat} round {progress.round} "
                          f"epoch {progress.epoch}; {CHECKPOINT} is saved, rerun to resume")  # fmt: skip

    # 4. Results: model.pt, then metrics.json last.
    best = progress.best
    scores = " ".join(f"{n} {d:.3f}" for n, d in zip(data.labels, best["dice"]))
    log(f"best repeat {best['repeat']} round {best['round']} epoch {best['epoch']}: "
        f"validation Dice loss {best['val_dice_loss']:.4f}, Dice {scores}")  # fmt: skip
    progress.wall_seconds = wall_before + time.perf_counter() - started
    write_history(cell, progress)
    save_model(cell, progress, data, options, plan)
    push(cell, [MODEL, HISTORY, LOG])
    metrics = final_metrics(progress, data, device, "complete")
    write_metrics(cell, metrics)
    # model.pt holds the result; the checkpoint (hundreds of MB) would only cost storage now.
    storage.delete(cell.work / CHECKPOINT)
    if cell.remote:
        storage.delete(cell.name(CHECKPOINT))
    return metrics


def restore(ckpt: dict, options: CellOptions, plan: Plan, data: Data, device: torch.device, progress: Progress):
    """Model, optimizer and scheduler (None at a round boundary) and RNG state from a checkpoint."""
    model = new_model(options, data, device, progress.repeat)
    model.load_state_dict(ckpt["model"])
    optimizer = scheduler = None
    if progress.epoch:
        optimizer, scheduler = new_optimizer(model, plan[progress.round])
        optimizer.load_state_dict(ckpt["optimizer"])
        match_device(optimizer, device)
        scheduler.load_state_dict(ckpt["scheduler"])
    with INIT_LOCK:  # the process-wide RNG: not while another cell's thread seeds its model
        torch.set_rng_state(ckpt["rng"]["torch"])
        if ckpt["rng"]["cuda"] is not None and device.type == "cuda":
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    return model, optimizer, scheduler


def describe_run(cell: Cell, options: CellOptions, plan: Plan, data: Data, device: torch.device) -> list[str]:
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


def end_diverged(cell: Cell, progress: Progress, row: dict, data: Data, device: torch.device, log: Callable) -> None:
    """Record the diverged epoch in history, training.log and metrics.json, then raise Diverged.

    The checkpoint keeps the last epoch it saved, never the diverged one: a rerun resumes there.
    """
    message = (f"loss became {row['train_loss']} (train) / {row['val_loss']} (validation) at repeat "
               f"{progress.repeat} round {progress.round} epoch {progress.epoch + 1}; lower the lr")  # fmt: skip
    progress.rows.append({k: row[k] for k in HISTORY_COLUMNS})
    log(format_row(row))
    log(f"diverged: {message}")
    write_history(cell, progress)
    push(cell, [HISTORY, LOG])
    write_metrics(cell, final_metrics(progress, data, device, "diverged", message))
    raise Diverged(message)


# ----------------------------------------------------------------------------- several cells, CLI


@contextmanager
def open_cell(uri: str, force: bool) -> Iterator[Cell]:
    """A local cell as is; a remote one downloaded into a scratch folder that is removed afterwards."""
    if not storage.is_s3(uri):
        yield Cell(uri, Path(uri))
        return
    storage.split_s3(uri)  # a malformed URI fails here with a message naming it
    scratch = Path(tempfile.mkdtemp(prefix="autolabel-cell-"))
    try:
        cell = Cell(uri.rstrip("/"), scratch)
        names = [OPTIONS, PLAN, METRICS] + ([] if force else [CHECKPOINT])
        with GATE.idle():
            for name in names:
                storage.download_file(cell.name(name), scratch / name)
        yield cell
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def fail_cell(cell: Cell, status: str, message: str, metrics: CellMetrics | None = None) -> None:
    """Record a failed or diverged cell in metrics.json (only for a cell that exists)."""
    if not (cell.work / OPTIONS).is_file():
        return  # no cell here (a typo in the path): write nothing
    metrics = metrics or CellMetrics(status=status, message=message)
    write_metrics(cell, metrics)


def run_cell(uri: str, force: bool = False, device: str | None = None, say: Callable[[str], None] = print) -> int:
    """Train one cell and turn the outcome into an exit code; never raises."""
    try:
        with open_cell(uri, force) as cell:
            if is_complete(cell.work) and not force:
                say(f"{cell.uri}: complete, skipped (rerun with --force to train again)")
                return EXIT_OK
            # A stale failed/diverged result must not outlive this run.
            if (cell.work / METRICS).exists():
                storage.delete(cell.work / METRICS)
                if cell.remote:
                    storage.delete(cell.name(METRICS))
            try:
                train_cell(cell, force, device, say)
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
                return EXIT_TERMINATED
    except storage.StorageError as e:
        print(e, file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    except Exception:  # noqa: BLE001 - one broken cell must not stop the others
        print(f"{uri}: unexpected error, the traceback follows", file=sys.stderr)
        traceback.print_exc()
        sys.stderr.flush()
        return EXIT_ERROR


def train_cells(
    cells: list[str], force: bool = False, device: str | None = None, workers: int | None = None,
    threads: int | None = None,
) -> int:  # fmt: skip
    """Train cells, each independent of the others' outcome; the worst exit code.

    ``threads`` > 1 trains that many cells at once in one process, a thread (and CUDA
    stream) each; ``workers`` > 1 runs that many such processes at once (autolabel.pack);
    otherwise one after another in this process (defaults: autolabel.pack.layout). With
    several cells every line of progress starts with the cell's name (errors on stderr name
    the cell's folder).
    """
    from autolabel import pack

    workers, threads = pack.layout(len(cells), device, workers, threads)
    if workers > 1:
        return pack.train_packed(cells, workers, force, device, threads)
    if threads > 1:
        return pack.train_threaded(cells, threads, force, device)
    codes = []
    for uri in cells:
        if stop_requested:
            break  # the cells not started yet wait for the rerun
        prefix = f"[{uri.rstrip('/').rsplit('/', 1)[-1]}] " if len(cells) > 1 else ""
        codes.append(run_cell(uri, force, device, say=lambda line, p=prefix: print(p + line, flush=True)))
    return worst(codes + ([EXIT_TERMINATED] if stop_requested else []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autolabel.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("cells", nargs="+", metavar="CELL_DIR", help="cell folder or s3://bucket/prefix")
    parser.add_argument("--force", action="store_true", help="retrain complete cells, ignoring checkpoints")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="override options.json device")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="worker processes at once (default: as many as the cells need on CUDA, up to 16; 1 on CPU)")
    parser.add_argument("--threads", type=int, metavar="K",
                        help="cells trained at once in each process, a thread and CUDA stream each "
                             "(default: see autolabel/pack.py; 1 on CPU)")
    parser.add_argument("--eager", action="store_true", help="no CUDA graphs: every step launched from Python")
    parser.add_argument("--checkpoint-every", metavar="SECONDS",
                        help=f"seconds between checkpoints, 0 for every epoch (default ${CHECKPOINT_ENV} or "
                             f"{DEFAULT_CHECKPOINT_EVERY_S:g}); SIGTERM always checkpoints")  # fmt: skip
    args = parser.parse_args(argv)
    global checkpoint_every_s
    try:
        checkpoint_every_s = None
        if args.checkpoint_every is not None:
            checkpoint_every_s = parse_seconds(args.checkpoint_every, "--checkpoint-every")
        checkpoint_interval()  # a bad $AUTOLABEL_CHECKPOINT_EVERY_S fails here, before any cell
    except BadInput as e:
        parser.error(str(e))
    for name in ("workers", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name}: must be at least 1, got {getattr(args, name)}")
    global stop_requested, stop_reason, use_graphs
    stop_requested, stop_reason, use_graphs = False, "SIGTERM", not args.eager
    run = (args.cells, args.force, args.device, args.workers, args.threads)
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        return train_cells(*run)
    previous = signal.signal(signal.SIGTERM, request_stop)
    try:
        return train_cells(*run)
    finally:
        signal.signal(signal.SIGTERM, previous)


def request_stop(signum: int, frame: Any) -> None:
    """SIGTERM handler: stop after the epoch in progress is checkpointed; a second SIGTERM kills."""
    global stop_requested, stop_reason
    stop_requested, stop_reason = True, "SIGTERM"
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


if __name__ == "__main__":
    # Run as a script this file is the module __main__, and autolabel.pack imports a second
    # copy as autolabel.train: run that copy's main, so that the flags and the SIGTERM
    # request are set where the cells (threads, worker options) read them.
    from autolabel.train import main as imported_main

    sys.exit(imported_main())
