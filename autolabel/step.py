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

Cells in threads of one process (autolabel.pack.train_threaded) record one at a time and
alone: the run's gate (``RunControl.gate``, autolabel/gate.py) stops the other threads at their
next step while one records, since
a CUDA call from another thread can invalidate a capture in progress (seen on an H200:
cudaErrorStreamCaptureInvalidated with three cells; the benchmark's threads, which do
nothing but steps, never hit it). Work the others already queued keeps running on the GPU.
"""

from __future__ import annotations

import torch

from autolabel.gate import Gate
from autolabel.losses import combined_loss

WARMUP_STEPS = 1  # eager steps of a batch size before its capture


def autocast(device: torch.device):
    """bf16 autocast on CUDA only: it halves activation traffic there and is slower on CPU."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def train_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, bce_weight: float
) -> torch.Tensor:
    """One optimizer step on one batch; its (bce, dice, loss) as a tensor, never read here."""
    with autocast(x.device):
        logits = model(x)
    loss, bce, dice = combined_loss(logits, y, bce_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return torch.stack([bce, dice, loss]).detach()


class TrainStep:
    """``step(idx)`` trains on ``x[idx], y[idx]`` and adds len(idx) x (bce, dice, loss) to ``sums``."""

    def __init__(self, model, optimizer, x: torch.Tensor, y: torch.Tensor, bce_weight: float, graphs: bool = True,
                 gate: Gate | None = None):
        """``gate``: the run's capture gate (``RunControl.gate``), shared by the cells of its threads."""
        self.model, self.optimizer, self.x, self.y = model, optimizer, x, y
        self.gate = gate or Gate()
        self.graphs = graphs and x.device.type == "cuda"
        self.sums = torch.zeros(3, device=x.device)
        self.bce_weight = torch.tensor(float(bce_weight), device=x.device)  # set_bce_weight fills it
        self.eager_runs: dict[int, int] = {}  # batch size -> eager steps so far
        self.captured: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}  # size -> (graph, its idx)

    def set_bce_weight(self, bce_weight: float) -> None:
        self.bce_weight.fill_(float(bce_weight))

    def __call__(self, idx: torch.Tensor) -> None:
        self.gate.safepoint()
        n = len(idx)
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
        self.sums.add_(train_step(self.model, self.optimizer, self.x[idx], self.y[idx], self.bce_weight) * len(idx))

    def capture(self, idx: torch.Tensor) -> torch.cuda.CUDAGraph:
        static_idx = idx.clone()
        graph = torch.cuda.CUDAGraph()
        with self.gate.exclusive(), torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self.run(static_idx)
        self.captured[len(idx)] = (graph, static_idx)
        return graph
