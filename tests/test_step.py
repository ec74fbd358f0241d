"""The training step object, the in-place restart of a round, and the gate that lets one thread record alone."""

from __future__ import annotations

import pytest
import torch

from autolabel.loop import new_optimizer
from autolabel.options import Round
from autolabel.step import TrainStep, train_step
from tests.conftest import tiny_batch, tiny_model

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_step_sums_are_the_batch_weighted_losses_of_train_step():
    x, y = tiny_batch(5)
    a, b = tiny_model(), tiny_model()
    opt_a, _ = new_optimizer(a, Round(lr=0.003, bce_weight=0.75, num_epochs=1))
    opt_b, _ = new_optimizer(b, Round(lr=0.003, bce_weight=0.75, num_epochs=1))
    step = TrainStep(a, opt_a, x, y, 0.75)
    assert not step.graphs  # CPU: every step eager
    expected = torch.zeros(3)
    for idx in (torch.tensor([0, 1, 2]), torch.tensor([3, 4])):
        step(idx)
        expected += train_step(b, opt_b, x[idx], y[idx], 0.75) * len(idx)
    assert torch.allclose(step.sums, expected)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not step.captured  # nothing recorded on a CPU
    step.set_bce_weight(0.25)
    assert float(step.bce_weight) == 0.25
