"""Fused packs on tiny CPU cells (autolabel/fused.py, fusing.py, adam.py): each cell trains as its solo run.

How close a fused cell can come to its solo run on a CPU: the pack runs a cell's convolutions as
one grouped convolution where the solo run has a plain one, so float32 rounds differently, and
Adam carries that on (a weight whose gradient is near Adam's eps moves by a visibly different
step). Measured with the cells below on this project's 2-core CPU machine (torch 2.14.1,
2026-12-04): at most 1.2e-3 apart in any epoch's validation loss and 3.0e-3 in final Dice; the
same solo cells rerun with 2 threads instead of 1 differ by up to 3.6e-4 and 1.5e-3. The tests
allow VAL_LOSS_TOL and DICE_TOL. Between fused runs the numbers are exact: a cell is bit for bit
the same whatever its pack-mates (a diverging one, or none), and after a SIGTERM and a resume.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from autolabel import fusing
from autolabel.adam import StackedAdam, kernel_update, stacked_update
from autolabel.cell import close_epoch, run_cell, start_run
from autolabel.celldir import CellDir
from autolabel.checkpoint import load_trained
from autolabel.control import RunControl
from autolabel.fused import build_pack, run_pack_epoch
from autolabel.loop import TABLE_HEADER
from autolabel.train import train_cells
from tests.conftest import (
    built_once,
    epoch_keys,
    history_rows,
    metrics_of,
    tiny_options,
)

# the scheduler of a fused cell never sees its own Adam step (the pack's does): autolabel.control.QUIET_WARNINGS
pytestmark = pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)`")

VAL_LOSS_TOL = 5e-3
DICE_TOL = 1e-2
# 8 subjects at 32x64: 6 train in two batches of 3 (BatchNorm over 2 images is too touchy: a
# last batch of 2 took fused and solo runs 1e-2 apart), 2 validate.
DATA = {"kind": "synthetic", "subjects": 8, "rows": 32, "cols": 64}
# name: (seed, lr, gamma, bce_weight); lr and bce_weight enter a 2-round plan as x(1, 1/2).
CELLS = {"a": (1, 0.0015, 0.9, 0.75), "b": (2, 0.001, 0.8, 0.5), "c": (3, 0.002, 1.0, 0.25)}
DIVERGING = {"d": (4, 10.0, 1.0, 0.5)}  # Adam at lr 10: the loss is NaN within the first epoch
NUMERIC = ("lr", "train_bce", "train_dice", "train_loss", "val_bce", "val_dice", "val_loss", "val_mean_dice")


def quiet() -> RunControl:
    """A run whose only checkpoints are a stop's: each costs a second or more here."""
    return RunControl(checkpoint_every_s=3600)


def write_cell(path: Path, seed: int, lr: float, gamma: float, bce: float, until: int = 2) -> Path:
    """A cell of two rounds: 2 epochs at (lr, bce), then 1 at (lr/2, bce/2); ``until`` repeats."""
    path.mkdir(parents=True, exist_ok=True)
    options = tiny_options(dataset=DATA, seed=seed, batch_size=3, until=until)
    plan = [{"lr": lr, "gamma": gamma, "bce_weight": bce, "num_epochs": 2},
            {"lr": lr / 2, "gamma": gamma, "bce_weight": bce / 2, "num_epochs": 1}]  # fmt: skip
    (path / "options.json").write_text(json.dumps(options))
    (path / "plan.json").write_text(json.dumps(plan))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """Cells a, b, c trained as one fused pack (folder fused/) and each solo (folder solo/), once
    for both test workers (the tests only read them)."""

    def build(root: Path) -> None:
        threads = torch.get_num_threads()
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("OMP_NUM_THREADS", "1")  # the trainer's threads (autolabel.state.configure_device)
            fused = [write_cell(root / "fused" / n, *spec) for n, spec in CELLS.items()]
            assert train_cells([str(c) for c in fused], quiet(), fused=True) == 0
            for n, spec in CELLS.items():
                assert run_cell(str(write_cell(root / "solo" / n, *spec)), quiet(), say=lambda line: None) == 0
        torch.set_num_threads(threads)

    return built_once(tmp_path_factory, "fused-reference", build)


def read_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """a, b, c and the diverging d as one pack in `python -m autolabel.train --fused`, SIGTERM as its
    first epoch begins: (cells, exit code, stderr)."""
    root = tmp_path_factory.mktemp("stopped")
    cells = [write_cell(root / n, *spec) for n, spec in (CELLS | DIVERGING).items()]
    env = os.environ | {"OMP_NUM_THREADS": "1", "AUTOLABEL_CHECKPOINT_EVERY_S": "3600"}  # only the stop saves
    cmd = [sys.executable, "-m", "autolabel.train", *map(str, cells), "--fused"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: queue.Queue = queue.Queue()
    errors: queue.Queue = queue.Queue()
    # One reader per pipe, each the pipe's only reader (communicate() would read stdout beside it).
    readers = [threading.Thread(target=read_lines, args=(pipe, q), daemon=True)
               for pipe, q in ((proc.stdout, lines), (proc.stderr, errors))]  # fmt: skip
    for reader in readers:
        reader.start()
    try:
        deadline = time.monotonic() + 120
        while "repeat round epoch" not in lines.get(timeout=max(0.1, deadline - time.monotonic())):
            pass  # the table's header: the pack's first epoch has begun
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        for reader in readers:
            reader.join(timeout=10)
    finally:
        proc.kill()
    return cells, proc.returncode, "".join(errors.queue)


def assert_matches(got: Path, want: Path, exact: bool) -> None:
    """Same epochs, lr and best epochs; validation loss and Dice within the tolerances (or equal)."""
    rows, ref = history_rows(got), history_rows(want)
    assert epoch_keys(rows) == epoch_keys(ref) and [r["batch_size"] for r in rows] == [r["batch_size"] for r in ref]
    for g, w in zip(rows, ref):
        if exact:
            assert [float(g[k]) for k in NUMERIC] == pytest.approx([float(w[k]) for k in NUMERIC], rel=1e-5)
        else:
            assert float(g["lr"]) == pytest.approx(float(w["lr"]), rel=1e-6)
            assert abs(float(g["val_loss"]) - float(w["val_loss"])) <= VAL_LOSS_TOL, (g, w)
    m, r = metrics_of(got), metrics_of(want)
    assert m.status == r.status == "complete" and m.epochs == r.epochs
    assert (m.best_repeat, m.best_round, m.best_epoch) == (r.best_repeat, r.best_round, r.best_epoch)
    assert [x.best_epoch for x in m.rounds] == [x.best_epoch for x in r.rounds]
    assert m.dice == pytest.approx(r.dice, abs=1e-6 if exact else DICE_TOL)


# ----------------------------------------------------------------------------- through the trainer


def test_each_cell_of_a_fused_pack_trains_as_its_solo_run(reference):
    root = reference
    for n in CELLS:
        fused, solo = root / "fused" / n, root / "solo" / n
        assert_matches(fused, solo, exact=False)
        # Today's files: the log reads as a solo cell's, model.pt rebuilds, the checkpoint is gone.
        log, solo_log = (fused / "training.log").read_text(), (solo / "training.log").read_text()
        assert log.splitlines()[1:6] == solo_log.splitlines()[1:6] and TABLE_HEADER in log
        assert len(log.splitlines()) == len(solo_log.splitlines())
        model, info = load_trained(fused / "model.pt")
        assert info["best"]["dice"] == pytest.approx(list(metrics_of(fused).dice.values()))
        assert not (fused / "checkpoint.pt").exists()
    # The cells differ from one another (a mix-up of seeds, lrs or data orders would show).
    losses = {n: history_rows(root / "fused" / n)[-1]["val_loss"] for n in CELLS}
    assert len(set(losses.values())) == len(CELLS)


def test_a_diverging_cell_ends_alone_as_a_solo_cell_does(stopped):
    cells, code, err = stopped
    d = cells[3]
    assert code == 143  # the stop outranks the divergence (autolabel.errors.worst)
    m = metrics_of(d)
    assert m.status == "diverged" and "lower the lr" in m.message and ("nan" in m.message or "inf" in m.message)
    assert m.epochs == 1 and len(history_rows(d)) == 1 and not (d / "model.pt").exists()
    assert "diverged: loss became" in (d / "training.log").read_text() and f"{d}: diverged:" in err
    assert not (d / "checkpoint.pt").exists()  # it had none to keep (a solo cell keeps its last saved)
    # Its pack-mates trained on: checkpointed by the stop (below), and after the rerun bit for bit
    # the cells of a pack that never had a diverging cell (the SIGTERM test).


@pytest.mark.usefixtures("one_thread", "torch_one_thread")  # the reruns: one thread, as the stopped command had
def test_sigterm_checkpoints_every_cell_and_a_rerun_resumes_fused_or_solo(reference, stopped, tmp_path, capsys):
    cells, code, err = stopped
    # 1. Every live cell of the pack checkpointed the epoch in progress, mid-round, and stopped.
    assert code == 143, err
    for c in cells[:3]:
        assert f"{c}: stopped by SIGTERM after repeat 0 round 0 epoch 1" in err
        assert epoch_keys(history_rows(c)) == [("0", "0", "1")] and not (c / "metrics.json").exists()
        ckpt = torch.load(c / "checkpoint.pt", weights_only=True)
        saved = [*ckpt["model"].values(), *(t for s in ckpt["optimizer"]["state"].values() for t in s.values())]
        # Its own weights and Adam state only (a view of the pack's would carry every cell).
        assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in saved)
        assert len(ckpt["optimizer"]["state"]) == len(ckpt["optimizer"]["param_groups"][0]["params"])

    # 2. a and b resume as a pack, c alone from a copy of its fused checkpoint (in this process: a
    # process start is a torch import).
    solo_c = shutil.copytree(cells[2], tmp_path / "c-solo")
    capsys.readouterr()
    assert train_cells([str(cells[0]), str(cells[1])], quiet(), fused=True) == 0
    assert "[a] resumed from checkpoint.pt at repeat 0 round 0 epoch 2" in capsys.readouterr().out
    for c in cells[:2]:  # bit for bit the uninterrupted pack's, which had c and no diverging cell
        assert_matches(c, reference / "fused" / c.name, exact=True)
    assert run_cell(str(solo_c), quiet(), say=lambda line: None) == 0
    assert_matches(solo_c, reference / "fused" / "c", exact=False)
    assert "resumed from checkpoint.pt at repeat 0 round 0 epoch 2" in (solo_c / "training.log").read_text()


@pytest.mark.usefixtures("one_thread", "torch_one_thread")
def test_a_solo_checkpoint_resumes_in_a_pack_and_a_round_restarts_from_its_best_epoch(tmp_path):
    cells = [write_cell(tmp_path / n, seed, 0.002, 0.9, 0.5, until=1) for n, seed in (("x", 5), ("y", 6))]
    ckpts = []
    for c in cells:  # 1. each alone for one epoch, then a stop: a solo mid-round checkpoint
        control = RunControl(checkpoint_every_s=3600)

        def stop_after_first_epoch(line: str, control=control) -> None:
            if line.split()[:3] == ["0", "0", "1"]:
                control.request_stop("SIGTERM")

        assert run_cell(str(c), control, say=stop_after_first_epoch) == 143
        ckpts.append(torch.load(c / "checkpoint.pt", weights_only=True))

    # 2. Both resume as one pack, which takes over each one's Adam state as it was saved.
    runs = [start_run(CellDir(str(c), c), quiet(), False, None, lambda line: None) for c in cells]
    pack = build_pack(runs)
    for k, ckpt in enumerate(ckpts):
        state = ckpt["optimizer"]["state"]
        assert all(torch.equal(pack.adam.exp_avg[i][k], state[i]["exp_avg"]) for i in state)
        assert all(torch.equal(pack.adam.exp_avg_sq[i][k], state[i]["exp_avg_sq"]) for i in state)
        assert float(pack.adam.steps[k]) == float(state[0]["step"]) == 2  # two batches in epoch 1

    # 3. Epoch 2, its rows made worse than epoch 1 so that the method's rule (the round's best by
    # validation loss) picks epoch 1: closing the round must load epoch 1's weights into each
    # cell's slice of the pack, which is what round 2 trains from.
    best = [runs[k].progress.round_best["state"] for k in range(2)]
    for k, row in run_pack_epoch(pack).items():
        close_epoch(runs[k], row | {"val_loss": runs[k].progress.round_best["val_loss"] + 1.0})
    for k, run in enumerate(runs):
        assert run.progress.rounds[0]["best_epoch"] == 1 and run.progress.round == 1
        weights = {**pack.model.stacked, **pack.model.stacked_buffers}
        assert all(torch.equal(weights[name][k], best[k][name]) for name in best[k])
    assert not torch.equal(best[0]["logits.weight"], best[1]["logits.weight"])  # two cells, not one twice


# ----------------------------------------------------------------------------- the pieces


def test_form_packs_groups_cells_of_one_shape(make_cell):
    def cell(name: str, **options) -> str:
        return str(make_cell(tiny_options(dataset=DATA, **options), None, name))

    a, b = cell("a", seed=1), cell("b", seed=2, pretrained=False)
    other_batch, other_model = cell("c", batch_size=2), cell("d", base_model="resnet34")
    e, f = cell("e", seed=3), cell("f", seed=4)
    (Path(e) / "metrics.json").write_text(json.dumps({"status": "complete"}))  # done: the usual path skips it
    Path(f, "plan.json").write_text("[]")  # bad input: the usual path reports it
    packs, rest = fusing.form_packs([a, b, other_batch, other_model, e, f, a], force=False, device=None)
    assert packs == [[a, b]]
    assert sorted(rest) == sorted([other_batch, other_model, e, f])


def test_stacked_adam_steps_each_cell_as_torch_adam():
    g = torch.Generator().manual_seed(0)
    shapes, lrs = [(4, 3, 3, 3), (7,), (2, 5)], [0.003, 0.001, 0.0005]
    cells = [[torch.randn(s, generator=g) for s in shapes] for _ in lrs]
    for update, fused in ((stacked_update, False), (kernel_update, True)):
        torch_cells = [[p.clone().requires_grad_() for p in c] for c in cells]
        adams = [torch.optim.Adam(ps, lr=lr, fused=fused) for ps, lr in zip(torch_cells, lrs)]
        stacked = [torch.stack([c[i] for c in cells]).requires_grad_() for i in range(len(shapes))]
        adam = StackedAdam(stacked, len(lrs))
        adam.lr.copy_(torch.tensor(lrs, dtype=torch.float64))
        for step in range(5):
            if step == 2:  # cell 1 starts a round: its moments and count from zero, as a new Adam
                adam.reset(1)
                adams[1] = torch.optim.Adam(torch_cells[1], lr=lrs[1], fused=fused)
            if step == 3:  # cell 2 diverged: left out from now on
                adam.skip[2] = 1.0
                frozen = [p[2].clone() for p in stacked]
            grads = [[torch.randn(s, generator=g) for s in shapes] for _ in lrs]
            for k, opt in enumerate(adams[:2] if step >= 3 else adams):
                for p, grad in zip(torch_cells[k], grads[k]):
                    p.grad = grad.clone()
                opt.step()
            for i, p in enumerate(stacked):
                p.grad = torch.stack([grad[i] for grad in grads])
            adam.steps.add_(1.0 - adam.skip)
            update(stacked, [p.grad for p in stacked], adam.exp_avg, adam.exp_avg_sq, adam.steps, adam.lr, adam.skip)
        for k in range(2):
            assert all(torch.allclose(p[k], q, rtol=0, atol=1e-7) for p, q in zip(stacked, torch_cells[k]))
            state = adam.cell_state(k, on_cpu=True)
            for s, p in zip(state, torch_cells[k]):
                torch_state = adams[k].state[p]
                assert float(s["step"]) == float(torch_state["step"])
                assert torch.allclose(s["exp_avg"], torch_state["exp_avg"], atol=1e-7)
        assert all(torch.equal(p[2], q) for p, q in zip(stacked, frozen))
    # The state a checkpoint carries goes back in as it came out.
    again = StackedAdam([p.detach().clone() for p in stacked], len(lrs))
    again.load_cell_state(0, adam.cell_state(0, on_cpu=True))
    assert all(torch.equal(m[0], n[0]) for m, n in zip(again.exp_avg, adam.exp_avg)) and again.steps[0] == 5
