"""The training step object, the in-place restart of a round, and the gate that lets one thread record alone."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from autolabel import train
from autolabel.model import build_model
from autolabel.options import Round
from autolabel.step import Gate, TrainStep, train_step


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("resnet18", 3, 2)


def batch(n: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), (torch.rand(n, 2, 32, 32, generator=g) > 0.5).float()


def test_step_sums_are_the_batch_weighted_losses_of_train_step():
    x, y = batch(5)
    a, b = tiny_model(), tiny_model()
    opt_a, _ = train.new_optimizer(a, Round(lr=0.003, bce_weight=0.75, num_epochs=1))
    opt_b, _ = train.new_optimizer(b, Round(lr=0.003, bce_weight=0.75, num_epochs=1))
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


def test_a_restarted_optimizer_steps_exactly_like_a_new_one():
    x, y = batch()
    rnd1, rnd2 = Round(lr=0.003, bce_weight=0.75, num_epochs=1), Round(lr=0.001, bce_weight=0.5, num_epochs=1, gamma=0.5)
    used = tiny_model()
    optimizer, scheduler = train.new_optimizer(used, rnd1)
    for _ in range(3):  # moments and step count that the restart must clear
        train_step(used, optimizer, x, y, 0.75)
        scheduler.step()
    fresh = tiny_model()
    fresh.load_state_dict(used.state_dict())
    new, new_scheduler = train.new_optimizer(fresh, rnd2)
    scheduler = train.restart_optimizer(optimizer, rnd2)
    assert scheduler.get_last_lr() == new_scheduler.get_last_lr() == [0.001]
    for _ in range(2):
        train_step(used, optimizer, x, y, 0.5)
        train_step(fresh, new, x, y, 0.5)
        scheduler.step()
        new_scheduler.step()
    assert scheduler.get_last_lr() == pytest.approx([0.00025])
    assert all(torch.equal(p, q) for p, q in zip(used.parameters(), fresh.parameters()))


def test_an_optimizer_state_from_a_cuda_run_loads_on_cpu():
    model = tiny_model()
    optimizer, _ = train.new_optimizer(model, Round(lr=0.003, bce_weight=0.75, num_epochs=1))
    train_step(model, optimizer, *batch(), 0.75)
    saved = optimizer.state_dict()
    # What a CUDA run saves (see new_optimizer): a tensor lr, fused and capturable.
    saved["param_groups"][0].update(lr=torch.tensor(0.002), fused=True, capturable=True)
    again, _ = train.new_optimizer(model, Round(lr=0.003, bce_weight=0.75, num_epochs=1))
    again.load_state_dict(saved)
    train.match_device(again, torch.device("cpu"))
    group = again.param_groups[0]
    assert group["lr"] == pytest.approx(0.002) and isinstance(group["lr"], float)
    assert not group["fused"] and not group["capturable"]
    train_step(model, again, *batch(), 0.75)  # steps without complaint


# ----------------------------------------------------------------------------- the gate


def test_exclusive_waits_until_every_other_member_stands_at_a_safepoint():
    gate, events = Gate(), []
    member_started, release_member = threading.Event(), threading.Event()

    def member() -> None:
        with gate.member():
            member_started.set()
            release_member.wait(5)  # busy with GPU work: no safepoint yet
            events.append("member at safepoint")
            gate.safepoint()  # stands still while the other records
            events.append("member resumed")

    def recorder() -> None:
        with gate.member():
            member_started.wait(5)
            with gate.exclusive():
                events.append("recording")
                time.sleep(0.1)
                events.append("recorded")

    threads = [threading.Thread(target=member), threading.Thread(target=recorder)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    assert events == []  # the recorder waits for the member
    release_member.set()
    for t in threads:
        t.join(5)
    assert events == ["member at safepoint", "recording", "recorded", "member resumed"]


def test_idle_members_and_queued_recorders_do_not_block_a_recording():
    gate, order = Gate(), []
    in_idle, leave_idle = threading.Event(), threading.Event()

    def transfer() -> None:
        with gate.member(), gate.idle():  # a file upload: no CUDA call
            in_idle.set()
            leave_idle.wait(5)
        order.append("transfer done")

    def record(name: str) -> None:
        with gate.member():
            in_idle.wait(5)
            with gate.exclusive():
                order.append(name)
                time.sleep(0.05)

    threads = [threading.Thread(target=transfer)] + [threading.Thread(target=record, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join(5)
    assert sorted(order) == ["a", "b"]  # both recorded, one after the other, while the transfer ran
    leave_idle.set()
    threads[0].join(5)
    assert order[-1] == "transfer done"


def test_a_thread_joining_during_a_recording_waits_for_its_end():
    gate, events = Gate(), []
    recording, finish = threading.Event(), threading.Event()

    def recorder() -> None:
        with gate.member(), gate.exclusive():
            recording.set()
            finish.wait(5)
            events.append("recorded")

    def late() -> None:
        recording.wait(5)
        with gate.member():  # a new cell starting: its data and model would be CUDA work
            events.append("late cell starts")

    threads = [threading.Thread(target=recorder), threading.Thread(target=late)]
    for t in threads:
        t.start()
    recording.wait(5)
    time.sleep(0.1)
    assert events == []
    finish.set()
    for t in threads:
        t.join(5)
    assert events == ["recorded", "late cell starts"]


def test_a_checkpoint_saved_contiguous_resumes_with_moments_laid_out_like_the_weights():
    model = tiny_model().to(memory_format=torch.channels_last)  # as on CUDA
    plain = tiny_model()
    optimizer, _ = train.new_optimizer(plain, Round(lr=0.003, bce_weight=0.75, num_epochs=1))
    train_step(plain, optimizer, *batch(), 0.75)  # a state saved by a contiguous run (CPU)
    again, _ = train.new_optimizer(model, Round(lr=0.003, bce_weight=0.75, num_epochs=1))
    again.load_state_dict(optimizer.state_dict())
    train.match_device(again, torch.device("cpu"))
    conv = next(p for p in model.parameters() if p.dim() == 4 and p.shape[1] > 1)
    assert not conv.is_contiguous() and conv.is_contiguous(memory_format=torch.channels_last)
    for key in ("exp_avg", "exp_avg_sq"):
        assert again.state[conv][key].stride() == conv.stride()
        assert torch.equal(again.state[conv][key], optimizer.state[next(iter(
            p for p, q in zip(plain.parameters(), model.parameters()) if q is conv))][key])


def test_a_lone_thread_passes_straight_through():
    gate = Gate()
    with gate.exclusive():
        gate.safepoint()
    with gate.member(), gate.exclusive():
        pass
