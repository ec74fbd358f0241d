"""The method's pieces (autolabel/loop.py): the optimizer a round starts from."""

from __future__ import annotations

import pytest
import torch

from autolabel import loop
from autolabel.options import Round
from autolabel.step import train_step
from tests.conftest import tiny_model


def test_a_restarted_optimizer_steps_exactly_like_a_new_one():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 3, 32, 32, generator=g), (torch.rand(2, 2, 32, 32, generator=g) > 0.5).float()
    rnd1, rnd2 = Round(lr=0.003, bce_weight=0.75, num_epochs=1), Round(lr=0.001, bce_weight=0.5, num_epochs=1, gamma=0.5)
    used = tiny_model()
    optimizer, scheduler = loop.new_optimizer(used, rnd1)
    for _ in range(3):  # moments and step count that the restart must clear
        train_step(used, optimizer, x, y, 0.75)
        scheduler.step()
    fresh = tiny_model()
    fresh.load_state_dict(used.state_dict())
    new, new_scheduler = loop.new_optimizer(fresh, rnd2)
    scheduler = loop.restart_optimizer(optimizer, rnd2)
    assert scheduler.get_last_lr() == new_scheduler.get_last_lr() == [0.001]
    for _ in range(2):
        train_step(used, optimizer, x, y, 0.5)
        train_step(fresh, new, x, y, 0.5)
        scheduler.step()
        new_scheduler.step()
    assert scheduler.get_last_lr() == pytest.approx([0.00025])
    assert all(torch.equal(p, q) for p, q in zip(used.parameters(), fresh.parameters()))
