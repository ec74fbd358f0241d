"""A cell's training state: the device, its data on the device (:class:`Data`) and where training stands (:class:`Progress`).

    device = pick_device(options.device, "cell/options.json"); configure_device(device)
    data = load_data(options, device, "cell/options.json", RunControl())

The features are standardised per channel with the training set's own mean and std (never
the validation subjects'), and stay on the device for the whole run.
"""

from __future__ import annotations

import ctypes
import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from autolabel.control import RunControl
from autolabel.datasets.format import INPUT_SETS, LABELS, DatasetError, split_subjects
from autolabel.datasets.sources import open_dataset
from autolabel.errors import BadInput
from autolabel.options import CellOptions, training_problem


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


# ----------------------------------------------------------------------------- the device


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
    """All CPU cores unless OMP_NUM_THREADS says otherwise, freed memory kept for the next step;
    fast cuDNN choices on CUDA."""
    if device.type == "cpu":
        # The local runner sets OMP_NUM_THREADS when it runs cells side by side: more
        # threads than free cores makes OpenMP spin and can be several times slower.
        threads = os.environ.get("OMP_NUM_THREADS", "")
        torch.set_num_threads(int(threads) if threads.isdigit() and int(threads) > 0 else len(os.sched_getaffinity(0)))
        keep_freed_memory()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one image size per cell: the search pays off at once


# glibc's malloc options (malloc.h): blocks from 128 KiB up are mapped for each allocation and
# unmapped when freed, and the heap's free top is given back above 128 KiB.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> None:
    """Let the process keep what it frees (blocks up to 32 MiB, 256 MiB at the heap's top): a CPU
    step then reuses the memory of the last one instead of the kernel zeroing it afresh. A tiny
    U-Net step (ResNet-18, batch 4 at 32x64, one thread) had 7000-16000 page faults and 11-26 ms of
    system time, and almost none with this: 226-243 ms a step against 238-266 ms (2-core machine,
    2026-12-06). A no-op where the C library is not glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, 32 << 20)
    mallopt(M_TRIM_THRESHOLD, 256 << 20)


def device_name(device: torch.device) -> str:
    """The device as training.log and metrics.json name it."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)


# ----------------------------------------------------------------------------- the data


def standardise(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of the training features; a constant channel gets std 1."""
    mean = x_train.mean(axis=(0, 2, 3), dtype=np.float64)
    std = x_train.std(axis=(0, 2, 3), dtype=np.float64)
    return mean.astype(np.float32), np.where(std > 1e-6, std, 1.0).astype(np.float32)


def scale_features(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Features [N, C, H, W] in the units the network trains on: per channel, (x - mean) / std of
    the training set (:func:`standardise`; model.pt stores both for later readers)."""
    mean = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return (x - mean) / std


def load_data(options: CellOptions, device: torch.device, shown: str, control: RunControl) -> Data:
    """The cell's data on the device: loaded here, or the shared copy of an identical one."""
    if control.shared_data is None:
        return read_data(options, device, shown)
    fields = options.model_dump(mode="json", include={"dataset", "partition", "inputs", "prediction", "image_size"})
    key = json.dumps([fields, str(device)], sort_keys=True)
    with control.data_lock:  # one thread reads it; the others with the same key wait for it
        if key not in control.shared_data:
            control.shared_data[key] = read_data(options, device, shown)
        return control.shared_data[key]


def read_data(options: CellOptions, device: torch.device, shown: str) -> Data:
    """Open the dataset, split it, standardise with training-set statistics, move it to the device."""
    try:
        cohort = open_dataset(options.dataset)
        train_ids, val_ids = split_subjects(cohort.subjects, options.partition)
        x_tr, y_tr = cohort.arrays(train_ids, options.inputs, options.prediction, options.image_size)
        x_va, y_va = cohort.arrays(val_ids, options.inputs, options.prediction, options.image_size)
    except DatasetError as e:
        # A problem with the cell's own choice (partition, inputs, dataset) names its options file.
        raise BadInput(f"{shown}: {e}" if e.field else str(e)) from None
    if not len(train_ids) or not len(val_ids):
        raise BadInput(f"{shown}: partition: the training and validation sets must both be non-empty")
    problem = training_problem(len(train_ids), tuple(x_tr.shape[-2:]))
    if problem:
        raise BadInput(f"{shown}: {problem}")
    for name, x in (("training", x_tr), ("validation", x_va)):
        if not np.isfinite(x).all():
            raise BadInput(f"{shown}: dataset: the {name} features contain NaN or infinite values; fix the dataset")
    mean, std = standardise(x_tr)
    # Everything lives on the device for the whole run: no host-to-device copies inside a step.
    memory = torch.channels_last if device.type == "cuda" else torch.contiguous_format

    def to_device(a: np.ndarray, scaled: bool = False) -> torch.Tensor:
        if scaled:
            a = scale_features(a, mean, std)
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
