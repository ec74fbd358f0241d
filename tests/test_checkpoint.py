"""checkpoint.pt and model.pt (autolabel.checkpoint): an optimizer state saved elsewhere resumes here."""

from __future__ import annotations

import pytest
import torch

from autolabel.checkpoint import match_device, same_weights
from autolabel.loop import new_optimizer
from autolabel.options import Round
from autolabel.step import train_step
from tests.conftest import tiny_batch, tiny_model

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_an_optimizer_state_from_a_cuda_run_loads_on_cpu():
    model = tiny_model()
    optimizer, _ = new_optimizer(model, Round(lr=0.003, bce_weight=0.75, num_epochs=1))
    train_step(model, optimizer, *tiny_batch(), 0.75)
    saved = optimizer.state_dict()
    # What a CUDA run saves (see new_optimizer): a tensor lr, fused and capturable.
    saved["param_groups"][0].update(lr=torch.tensor(0.002), fused=True, capturable=True)
    again, _ = new_optimizer(model, Round(lr=0.003, bce_weight=0.75, num_epochs=1))
    again.load_state_dict(saved)
    match_device(again, torch.device("cpu"))
    group = again.param_groups[0]
    assert group["lr"] == pytest.approx(0.002) and isinstance(group["lr"], float)
    assert not group["fused"] and not group["capturable"]
    train_step(model, again, *tiny_batch(), 0.75)  # steps without complaint


def test_a_checkpoint_saved_contiguous_resumes_with_moments_laid_out_like_the_weights():
    model = tiny_model().to(memory_format=torch.channels_last)  # as on CUDA
    plain = tiny_model()
    optimizer, _ = new_optimizer(plain, Round(lr=0.003, bce_weight=0.75, num_epochs=1))
    train_step(plain, optimizer, *tiny_batch(), 0.75)  # a state saved by a contiguous run (CPU)
    again, _ = new_optimizer(model, Round(lr=0.003, bce_weight=0.75, num_epochs=1))
    again.load_state_dict(optimizer.state_dict())
    match_device(again, torch.device("cpu"))
    conv = next(p for p in model.parameters() if p.dim() == 4 and p.shape[1] > 1)
    assert not conv.is_contiguous() and conv.is_contiguous(memory_format=torch.channels_last)
    for key in ("exp_avg", "exp_avg_sq"):
        assert again.state[conv][key].stride() == conv.stride()
        assert torch.equal(again.state[conv][key], optimizer.state[next(iter(
            p for p, q in zip(plain.parameters(), model.parameters()) if q is conv))][key])


def test_same_weights_compares_values_not_identity():
    a = tiny_model().state_dict()
    copy = {k: v.clone() for k, v in a.items()}
    assert same_weights(a, a) and same_weights(copy, a)
    changed = tiny_model(seed=1).state_dict()
    assert not same_weights(changed, a)
