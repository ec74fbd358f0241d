"""A fused pack: K cells of one shape trained as one model, vmapped over K, each still its own cell.

    python -m autolabel.train CELL_A CELL_B CELL_C ... --fused    # autolabel/fusing.py forms the packs

Why: at batch 2-6 on 128x256 one cell's kernels are too small to fill a big GPU, and cells in
threads only overlap them (README, "Packing"). Stacking K cells' weights and running the U-Net
under ``torch.func.vmap`` (PyTorch's model-ensembling recipe: ``stack_module_state`` and
``functional_call``) turns every convolution into one grouped convolution over the K cells, so
each kernel is K times larger. BatchNorm trains on each cell's own batch, its running statistics
stacked buffers updated in place.

Each cell of the pack keeps everything of a solo run (autolabel/cell.py), because the pack runs
the same stages per cell around one joint epoch:

- its own weights: cell k's model is a real module whose parameters and buffers are views of
  slice k of the stacked tensors (:meth:`FusedModel.bind`), so ``begin_round``'s fresh
  initialisation (from the cell's own seed, as ``autolabel.loop.new_model`` makes it),
  ``record_epoch``'s best weights and ``finish_round``'s restore of the best epoch read and
  write that slice; checkpoints and model.pt hold that cell's weights only;
- its own data order (a row of the batch index, from the generator a solo epoch would seed),
  lr and gamma (its own StepLR; the pack's Adam takes one lr per cell, autolabel/adam.py), BCE
  weight, history, log, checkpoints and metrics, in today's formats: a fused cell's checkpoint
  resumes solo and the other way round;
- isolation: the cells share no weight, so each cell's gradient is its own loss's. A cell whose
  loss becomes NaN or infinite ends ``diverged`` as a solo cell does and is left out of every
  later update (the pack's Adam skips it); its pack-mates train on.

On CUDA the pack's step (gather, bf16 autocast forward, losses, backward, Adam) is one
:class:`autolabel.step.TrainStep`, recorded as a CUDA graph per batch size like a solo cell's.
The activations stay in vmap's NCHW layout: channels_last does not survive vmap's batching of
max-pooling and upsampling (seen on CPU, PyTorch 2.14), so only the input could be laid out so.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
from torch.func import functional_call, stack_module_state, vmap

from autolabel.adam import StackedAdam
from autolabel.cell import CellRun, begin_round
from autolabel.loop import (
    EVAL_BATCH,
    epoch_generator,
    epoch_row,
    new_model,
    train_one_epoch,
    validation_scores,
)
from autolabel.losses import combined_loss
from autolabel.state import Data
from autolabel.step import TrainStep

# Validation images in one vmapped forward, all cells together: the batch per cell is this / K
# (at most EVAL_BATCH, as solo), which bounds the activations a big pack holds at once. Dice is
# summed over batches, so the batch only changes the float rounding of the validation loss.
FUSED_EVAL_IMAGES = 256


class FloatBatchNorm(torch.nn.BatchNorm2d):
    """BatchNorm2d on a float32 copy of its input, its output back in the input's dtype.

    Under vmap, PyTorch applies a batched BatchNorm's weight and bias outside the kernel and
    calls the kernel without them; CUDA's backward kernel then refuses autocast's bf16 input
    beside float32 running statistics ("Expected running_mean to have type BFloat16 but got
    Float": PyTorch 2.11 on an H200, 2026-12-04), a mix it accepts when given the weight. A
    solo cell's BatchNorm computes in float32 from bf16 input too and returns bf16, as this does.
    Elsewhere (float32 input) the casts do nothing.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class FusedModel(torch.nn.Module):
    """K U-Nets of one architecture as one module: stacked weights, the forward vmapped over K.

    ``model(x)`` with x [K, batch, C, H, W] (a batch per cell) returns [K, batch, labels, H, W].
    """

    def __init__(self, models: list[torch.nn.Module]):
        super().__init__()
        params, buffers = stack_module_state(models)
        # Dense [K, ...] tensors: each cell's slice is then a dense tensor too, as Adam's kernel wants.
        self.stacked = {n: p.detach().contiguous().requires_grad_() for n, p in params.items()}
        self.stacked_buffers = {n: b.contiguous() for n, b in buffers.items()}
        # The architecture alone (no memory): functional_call runs it with the stacked tensors,
        # and its train/eval flag switches BatchNorm as it does for a solo model.
        self.base = copy.deepcopy(models[0]).to("meta")
        for module in self.base.modules():
            if type(module) is torch.nn.BatchNorm2d:
                module.__class__ = FloatBatchNorm  # the same module, its forward in float32 (see there)
        self.cells = len(models)

    def call(self, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        """One cell's forward, as vmap sees it: its weights and buffers, its input."""
        return functional_call(self.base, (params, buffers), (x,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return vmap(self.call)(self.stacked, self.stacked_buffers, x)

    @torch.no_grad()
    def bind(self, cell: int, model: torch.nn.Module) -> None:
        """Make ``model``'s parameters and buffers views of slice ``cell`` of the stack.

        The parameters stay the same objects (only their storage changes), so an optimizer
        built over them (a resumed cell's) still names them.
        """
        for name, p in model.named_parameters():
            p.data = self.stacked[name][cell]
        for name, _ in model.named_buffers():
            owner, _, attr = name.rpartition(".")
            setattr(model.get_submodule(owner), attr, self.stacked_buffers[name][cell])


def cell_losses(logits: torch.Tensor, target: torch.Tensor, bce_weight: torch.Tensor):
    """(loss, bce, dice) of each cell, [K] each: the method's loss (autolabel.losses) vmapped."""
    return vmap(combined_loss)(logits, target, bce_weight)


@torch.no_grad()
def validate(model: FusedModel, data: Data, bce_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each cell's validation means (bce, dice, loss) [K, 3] and Dice per label [K, labels]:
    autolabel.loop.validation_scores vmapped over the cells, on the shared validation images."""
    model.eval()
    batch = max(1, min(EVAL_BATCH, FUSED_EVAL_IMAGES // model.cells))

    def one_cell(params: dict, buffers: dict, weight: torch.Tensor):
        return validation_scores(lambda x: model.call(params, buffers, x), data, weight, batch)

    return vmap(one_cell)(model.stacked, model.stacked_buffers, bce_weight)


# ----------------------------------------------------------------------------- the pack


@dataclass
class FusedPack:
    """The started cells of one pack (autolabel/cell.py's CellRun each) and what they train as."""

    runs: list[CellRun]
    model: FusedModel
    adam: StackedAdam
    step: TrainStep
    live: list[int] = field(default_factory=list)  # cells still training, by index


def build_pack(runs: list[CellRun]) -> FusedPack:
    """Stack the started cells' models (a resumed cell's restored weights and Adam state; any
    weights for a fresh one, since begin_round loads its initialisation) and bind each to its slice."""
    first = runs[0]
    template = next((r.model for r in runs if r.model is not None), None)
    if template is None:
        template = new_model(first.options, first.data, first.device, first.progress.repeat, first.control.init_lock)
    for run in runs:
        if run.model is None:
            run.model = copy.deepcopy(template)
    model = FusedModel([run.model for run in runs])
    for k, run in enumerate(runs):
        model.bind(k, run.model)
    adam = StackedAdam(list(model.stacked.values()), len(runs))
    for k, run in enumerate(runs):
        if run.optimizer is not None and run.optimizer.state:  # resumed mid-round: its Adam goes on
            adam.load_cell_state(k, [run.optimizer.state[p] for p in run.model.parameters()])
            run.optimizer.state.clear()  # the pack's Adam holds it now (see export_optimizer)
    step = TrainStep(model, adam, first.data.x_train, first.data.y_train, [0.0] * len(runs),
                     graphs=first.control.graphs, gate=first.control.gate, loss_fn=cell_losses)  # fmt: skip
    return FusedPack(runs, model, adam, step, live=list(range(len(runs))))


def begin_pack_epoch(pack: FusedPack) -> list[float]:
    """Each live cell's begin_round (a new repeat's weights into its slice, a new round's optimizer),
    a zero Adam slot for a cell starting a round, then every cell's lr and BCE weight into the step;
    the lrs, as each cell's history row shows its own."""
    for k in pack.live:
        run = pack.runs[k]
        begin_round(run)
        if run.progress.epoch == 0:
            pack.adam.reset(k)
    lrs = [float(run.scheduler.get_last_lr()[0]) if run.scheduler else 0.0 for run in pack.runs]
    pack.adam.lr.copy_(torch.tensor(lrs, dtype=torch.float64))
    pack.step.set_bce_weight([run.plan[run.progress.round].bce_weight for run in pack.runs])
    return lrs


def run_pack_epoch(pack: FusedPack) -> dict[int, dict]:
    """One epoch of every cell at once: train, validate; each live cell's history row (as
    autolabel.loop.run_epoch makes it, its scheduler stepped), by cell index."""
    lrs = begin_pack_epoch(pack)
    lead = pack.runs[pack.live[0]]
    rnd, data = lead.plan[lead.progress.round], lead.data
    batch_size = rnd.batch_size or lead.options.batch_size  # the same for every cell (autolabel/fusing.py)
    started = time.perf_counter()
    # A diverged cell's row of the batch index is still drawn (its own order): its slice computes
    # and is never updated, so the kernels keep their shapes and the CUDA graphs stay valid.
    generators = [epoch_generator(run.options, run.progress) for run in pack.runs]
    train = train_one_epoch(pack.step, batch_size, generators).tolist()
    train_done = time.perf_counter()
    val, dice = validate(pack.model, data, pack.step.bce_weight)
    val, dice = val.tolist(), dice.tolist()
    return {
        k: epoch_row(pack.runs[k].progress, pack.runs[k].scheduler, len(data.x_train), lrs[k], batch_size,
                     train[k] + val[k] + dice[k], started, train_done)  # fmt: skip
        for k in pack.live
    }


def export_optimizer(pack: FusedPack, cell: int) -> None:
    """Cell ``cell``'s Adam state into its own torch.optim.Adam (the one begin_round made), so its
    checkpoint holds today's optimizer state; :func:`clear_optimizer` empties it again."""
    run = pack.runs[cell]
    on_cpu = run.device.type != "cuda"  # where a solo cell's Adam keeps its step count
    for p, state in zip(run.model.parameters(), pack.adam.cell_state(cell, on_cpu)):
        run.optimizer.state[p] = state


def clear_optimizer(pack: FusedPack, cell: int) -> None:
    pack.runs[cell].optimizer.state.clear()
