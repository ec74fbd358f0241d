"""Adam for the K cells of a fused pack: one update of their stacked weights, each cell at its own lr.

    adam = StackedAdam(params, cells=K)   # params: the pack's stacked weights, [K, ...] each
    adam.lr.copy_(lrs); adam.step()       # after backward; lrs: one per cell
    adam.reset(k)                         # cell k starts a round: zero moments, step 0
    adam.skip[k] = 1                      # cell k diverged: left out of every update from now on

Each cell's update is what ``torch.optim.Adam`` as :func:`autolabel.loop.new_optimizer` makes it
(betas 0.9/0.999, eps 1e-8, no weight decay) would do to that cell alone, within float rounding
(tests/test_fused.py checks both paths against it):

- on CUDA and the CPU, :func:`kernel_update` runs the kernel of ``Adam(fused=True)`` (what a solo
  cell steps with there, :func:`fused_adam`) once per cell on its slices of the stack: one pass
  over the weights and moments, where the elementwise form would make about ten. The per-cell lr
  and skip flag are tensors, so a CUDA graph of the step replays with whatever they hold
  (autolabel/step.py). On the CPU it is bitwise the solo cell's update;
- elsewhere (MPS), :func:`stacked_update` is Adam's single-tensor update written over the
  [K, ...] tensors, with the per-cell scalars (lr, bias corrections) as [K] tensors broadcast
  over each cell's slice.

:meth:`StackedAdam.cell_state` and :meth:`StackedAdam.load_cell_state` convert one cell's slice
to and from the per-parameter state of ``torch.optim.Adam``, so a fused cell's checkpoint is
today's checkpoint (autolabel/fused.py).
"""

from __future__ import annotations

import torch

# torch.optim.Adam's defaults, which autolabel.loop.new_optimizer keeps.
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8


def fused_adam(device: torch.device) -> bool:
    """Whether Adam steps with its fused kernel on ``device``: a solo cell (autolabel.loop) and a
    fused pack alike. On the CPU it steps a U-Net about 3x faster than the per-tensor loop (0.025
    against 0.079 s for ResNet-18's 17.8 M weights, one thread, 2026-12-05)."""
    return device.type in ("cuda", "cpu")


class StackedAdam:
    """The optimizer of a fused pack's step: ``zero_grad`` and ``step`` as TrainStep calls them."""

    def __init__(self, params: list[torch.Tensor], cells: int):
        self.params = params
        device = params[0].device
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.contiguous_format) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.contiguous_format) for p in params]
        self.steps = torch.zeros(cells, device=device)  # float32, as torch.optim.Adam counts
        # CUDA: float32, as a solo CUDA cell's tensor lr; elsewhere float64, as a solo CPU cell's Python float.
        self.lr = torch.zeros(cells, device=device, dtype=torch.float32 if device.type == "cuda" else torch.float64)
        self.skip = torch.zeros(cells, device=device)  # 1.0: this cell is left out of the update

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        grads = [p.grad for p in self.params]
        self.steps.add_(1.0 - self.skip)
        update = kernel_update if fused_adam(self.steps.device) else stacked_update
        update(self.params, grads, self.exp_avg, self.exp_avg_sq, self.steps, self.lr, self.skip)

    @torch.no_grad()
    def reset(self, cell: int) -> None:
        """Cell ``cell`` starts a round: zero moments and step count, as a new torch.optim.Adam."""
        for m, v in zip(self.exp_avg, self.exp_avg_sq):
            m[cell].zero_()
            v[cell].zero_()
        self.steps[cell] = 0.0

    def cell_state(self, cell: int, on_cpu: bool) -> list[dict[str, torch.Tensor]]:
        """Cell ``cell``'s state per parameter, as torch.optim.Adam keeps it (copies; its step on the
        CPU where a solo cell keeps it there, ``on_cpu``)."""
        step = self.steps[cell].detach().clone()
        step = step.cpu() if on_cpu else step
        return [{"step": step.clone(), "exp_avg": m[cell].clone(), "exp_avg_sq": v[cell].clone()}
                for m, v in zip(self.exp_avg, self.exp_avg_sq)]  # fmt: skip

    @torch.no_grad()
    def load_cell_state(self, cell: int, states: list[dict[str, torch.Tensor]]) -> None:
        """The reverse of :meth:`cell_state`: a restored torch.optim.Adam's state into cell ``cell``'s slice."""
        for m, v, state in zip(self.exp_avg, self.exp_avg_sq, states):
            m[cell].copy_(state["exp_avg"])
            v[cell].copy_(state["exp_avg_sq"])
        self.steps[cell] = float(states[0]["step"])


def per_cell(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[K] values shaped to broadcast over a [K, ...] tensor, one per cell's slice."""
    return values.view(-1, *([1] * (like.dim() - 1)))


@torch.no_grad()
def stacked_update(params, grads, exp_avgs, exp_avg_sqs, steps, lr, skip) -> None:
    """Adam's single-tensor update (torch.optim.adam, capturable=False) over [K, ...] tensors.

    The scalars are computed per cell in float64, as Adam computes them in Python floats; a
    skipped cell's weights are left as they are (not run in a CUDA graph: it may look at ``skip``).
    """
    step = steps.double()
    step_size = lr.double() / (1 - BETA1**step)
    bias_correction2_sqrt = (1 - BETA2**step).sqrt()
    skipped = skip.bool()
    any_skipped = bool(skipped.any())
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
        m.lerp_(g, 1 - BETA1)
        v.mul_(BETA2).addcmul_(g, g, value=1 - BETA2)
        denom = v.sqrt().div_(per_cell(bias_correction2_sqrt.to(p.dtype), p)).add_(EPS)
        # addcdiv_(m, denom, value=-step_size), with a value per cell
        change = m.mul(per_cell(-step_size.to(p.dtype), p)).div_(denom)
        if any_skipped:
            change[skipped] = 0.0
        p.add_(change)


@torch.no_grad()
def kernel_update(params, grads, exp_avgs, exp_avg_sqs, steps, lr, skip) -> None:
    """Adam(fused=True)'s kernel once per cell, on that cell's slices; a skipped cell's ``found_inf``
    is 1, which makes the kernel leave its weights and moments alone (as for GradScaler's skipped steps)."""
    for k in range(len(steps)):
        torch._fused_adam_(
            [p[k] for p in params], [g[k] for g in grads], [m[k] for m in exp_avgs], [v[k] for v in exp_avg_sqs],
            [], [steps[k]] * len(params), amsgrad=False, lr=lr[k], beta1=BETA1, beta2=BETA2, weight_decay=0.0,
            eps=EPS, maximize=False, grad_scale=None, found_inf=skip[k],
        )  # fmt: skip
