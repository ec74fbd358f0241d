"""One cell's optimizer step, replayed from a CUDA graph once it is warm.

An eager step of the published U-Net at batch 2-6 costs ~13 ms on an H200 whatever the batch
or precision (ResNet-18, PyTorch 2.11, measured 2026-11-27), nearly all of it the CPU
launching ~1000 small kernels while the GPU idles. A CUDA graph
records those launches once and replays them with one call, so the step costs what its
kernels cost. :class:`TrainStep` records the whole step: the gather of the batch from the
training set on the device, autocast forward, loss, backward and the fused Adam update,
plus the sum of the losses for the epoch's mean. The learning rate and the BCE weight are
device tensors filled in place (StepLR each epoch, the trainer each round), so one graph
serves every epoch.

The numbers are those of the trainer's eager step (``--eager``): the same kernels on the
same tensors (not bit for bit those of trainers before the lr and BCE weight became float32
tensors: a few ulps apart). Each batch
size is run eagerly ``WARMUP_STEPS`` times first (Adam creates its state, cuDNN picks its
algorithms), then captured; the last, smaller batch of an epoch gets its own graph.
Elsewhere (CPU, MPS, or ``graphs=False``) every step runs eagerly.

A cell records its graphs once for the whole run: rounds and repeats reuse the same
model, optimizer and BCE-weight tensors, reset in place (autolabel/cell.py, begin_epoch).

A fused pack (autolabel/fused.py) is one TrainStep too: its model is K cells vmapped, its
loss one per cell (``loss_fn``), its BCE weight a [K] tensor, its batch index [K, batch]
(one row per cell) and its sums [K, 3]; the graph logic is the same.

Cells in threads of one process (autolabel.pack.train_threaded) record one at a time and
alone: the run's gate (``RunControl.gate``, autolabel/gate.py) stops the other threads at their
next step while one records, since
a CUDA call from another thread can invalidate a capture in progress (seen on an H200:
cudaErrorStreamCaptureInvalidated with three cells; the benchmark's threads, which do
nothing but steps, never hit it). Work the others already queued keeps running on the GPU.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from autolabel.gate import Gate
from autolabel.losses import combined_loss

WARMUP_STEPS = 1  # eager steps of a batch size before its capture


def autocast(device: torch.device):
    """bf16 autocast on CUDA only: it halves activation traffic there and is slower on CPU."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def train_step(
    model: torch.nn.Module, optimizer, x: torch.Tensor, y: torch.Tensor, bce_weight, loss_fn: Callable = combined_loss
) -> torch.Tensor:
    """One optimizer step on one batch; its (bce, dice, loss) as a tensor, never read here.

    A fused pack's ``loss_fn`` returns one loss per cell: their sum's gradient is each cell's
    own (the cells share no weight), and the result is [K, 3].
    """
    with autocast(x.device):
        logits = model(x)
    loss, bce, dice = loss_fn(logits, y, bce_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward(torch.ones_like(loss))  # for one loss, what loss.backward() does
    optimizer.step()
    return torch.stack([bce, dice, loss], dim=-1).detach()


class TrainStep:
    """``step(idx)`` trains on ``x[idx], y[idx]`` and adds the batch size x (bce, dice, loss) to ``sums``."""

    def __init__(self, model, optimizer, x: torch.Tensor, y: torch.Tensor, bce_weight: float | Sequence[float],
                 graphs: bool = True, gate: Gate | None = None, loss_fn: Callable = combined_loss):  # fmt: skip
        """``gate``: the run's capture gate (``RunControl.gate``), shared by the cells of its threads.
        A fused pack gives one BCE weight per cell and its per-cell ``loss_fn``."""
        self.model, self.optimizer, self.x, self.y, self.loss_fn = model, optimizer, x, y, loss_fn
        self.gate = gate or Gate()
        self.graphs = graphs and x.device.type == "cuda"
        # set_bce_weight fills it: a scalar, or one per cell of a fused pack
        self.bce_weight = torch.tensor(bce_weight, dtype=torch.float32, device=x.device)
        self.sums = torch.zeros(*self.bce_weight.shape, 3, device=x.device)
        self.eager_runs: dict[int, int] = {}  # batch size -> eager steps so far
        self.captured: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}  # size -> (graph, its idx)

    def set_bce_weight(self, bce_weight: float | Sequence[float]) -> None:
        self.bce_weight.copy_(torch.tensor(bce_weight, dtype=torch.float32))

    def __call__(self, idx: torch.Tensor) -> None:
        self.gate.safepoint()
        n = idx.shape[-1]  # the batch size (a fused pack's idx has a row per cell)
        if n in self.captured:
            graph, static_idx = self.captured[n]
            static_idx.copy_(idx)
            graph.replay()
        elif not self.graphs or self.eager_runs.get(n, 0) < WARMUP_STEPS:
            self.eager_runs[n] = self.eager_runs.get(n, 0) + 1
            self.run(idx)
        else:
            self.capture(idx).replay()  # recording runs nothing: this replay is the step

    def run(self, idx: torch.Tensor) -> None:
        losses = train_step(self.model, self.optimizer, self.x[idx], self.y[idx], self.bce_weight, self.loss_fn)
        self.sums.add_(losses * idx.shape[-1])

    def capture(self, idx: torch.Tensor) -> torch.cuda.CUDAGraph:
        static_idx = idx.clone()
        graph = torch.cuda.CUDAGraph()
        with self.gate.exclusive(), torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self.run(static_idx)
        self.captured[idx.shape[-1]] = (graph, static_idx)
        return graph
