"""The command line (autolabel.train) end to end on tiny CPU cells: files, exit codes, flags, several cells."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from autolabel import train
from autolabel.checkpoint import load_trained
from autolabel.control import CHECKPOINT_ENV, RunControl
from autolabel.errors import worst
from tests.conftest import (
    DIVERGING_PLAN,
    SMALL,
    epoch_keys,
    history_rows,
    metrics_of,
    tiny_options,
    tiny_plan,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def small_options(**overrides) -> dict:
    return tiny_options(dataset=SMALL, **overrides)


def cli(*args: str, module: str = "autolabel.train", **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, **kwargs)


# ----------------------------------------------------------------------------- a whole cell


@pytest.mark.slow
def test_cli_trains_a_tiny_cell_and_writes_every_file(make_cell):
    # The default tiny cohort (12 subjects, 32x64: 10 train / 2 validation), which other tests share.
    cell = make_cell(tiny_options(), tiny_plan(rounds=3, epochs=2))
    done = cli(str(cell), env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in cell.iterdir()) == [
        "history.csv", "metrics.json", "model.pt", "options.json", "plan.json", "training.log"
    ]  # fmt: skip  (checkpoint.pt is deleted once model.pt holds the result)

    m = metrics_of(cell)
    assert m.status == "complete" and m.epochs == 6 and m.train_images == 6 * 10
    assert set(m.dice) == {"V1", "V2", "V3"} and m.mean_dice == pytest.approx(sum(m.dice.values()) / 3)
    assert [(r.round, r.best_epoch in (1, 2)) for r in m.rounds] == [(0, True), (1, True), (2, True)]
    assert m.best_val_dice_loss == min(r.val_dice_loss for r in m.rounds)
    assert m.best_round == m.repeats[0].best_round and m.train_images_per_second > 0
    assert m.device == "cpu (1 threads)"

    rows = history_rows(cell)
    assert epoch_keys(rows) == [("0", str(r), str(e)) for r in range(3) for e in (1, 2)]
    assert [float(r["lr"]) for r in rows[::2]] == pytest.approx([0.003, 0.002, 0.001])
    log = (cell / "training.log").read_text().splitlines()
    assert log == done.stdout.splitlines()  # the log is streamed to stdout line by line
    assert sum(line.split()[:1] == ["0"] for line in log) == 6

    model, info = load_trained(cell / "model.pt")
    assert info["channels"][-1] == "prf_cod" and info["labels"] == ["V1", "V2", "V3"]
    assert info["feature_mean"].shape == (14,) and info["options"]["inputs"] == "full"
    with torch.no_grad():
        assert model(torch.zeros(1, 14, 32, 64)).shape == (1, 3, 32, 64)


# ----------------------------------------------------------------------------- resume after a kill


@pytest.mark.slow
@pytest.mark.usefixtures("checkpoint_every_epoch")
def test_resume_after_sigkill_mid_epoch(make_cell, capsys):
    cell = make_cell(small_options(), tiny_plan(rounds=2, epochs=2))
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "autolabel.train", str(cell)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while not (cell / "history.csv").exists():  # written right after the first checkpoint
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
        proc.communicate()
    before = history_rows(cell)
    assert proc.returncode == -signal.SIGKILL and (cell / "checkpoint.pt").exists()
    assert 1 <= len(before) < 4 and not (cell / "metrics.json").exists()

    assert train.main([str(cell)]) == 0  # the rerun, in this process (a process start is a torch import)
    out = capsys.readouterr().out
    after = history_rows(cell)
    assert epoch_keys(after) == [("0", str(r), str(e)) for r in range(2) for e in (1, 2)]
    assert after[: len(before)] == before  # resumed, not restarted: the early epochs were not retrained
    assert "resumed from checkpoint.pt" in out and "cell " not in out
    assert metrics_of(cell).epochs == 4


# ----------------------------------------------------------------------------- bad input

BAD_INPUTS = {
    "missing options": (None, tiny_plan(), "options.json: not found"),
    "options syntax": ('{"device": "cpu",\n  "inputs": }', tiny_plan(), "options.json: invalid JSON at line 2 column"),
    "plan syntax": (tiny_options(), '[{"lr": 0.1,}]', "plan.json: invalid JSON at line 1 column"),
    "base model": (tiny_options(base_model="resnet50"), tiny_plan(), "options.json: base_model: Input should be 'resnet18' or 'resnet34' (got 'resnet50')"),
    "input set": (tiny_options(inputs="rgb"), tiny_plan(), "options.json: inputs: Input should be 'anat'"),
    "prediction": (tiny_options(prediction="V4"), tiny_plan(), "options.json: prediction: Input should be 'area' or 'ring' (got 'V4')"),
    "unknown field": (tiny_options(learning_rate=0.1), tiny_plan(), "options.json: learning_rate: Extra inputs are not permitted"),
    "bce_weight high": (tiny_options(), tiny_plan(bce_weight=1.5), "plan.json: [0].bce_weight: Input should be less than or equal to 1"),
    "bce_weight low": (tiny_options(), tiny_plan(bce_weight=-0.1), "plan.json: [0].bce_weight: Input should be greater than or equal to 0"),
    "lr zero": (tiny_options(), tiny_plan(lr=0), "plan.json: [0].lr: Input should be greater than 0"),
    "gamma zero": (tiny_options(), tiny_plan(gamma=0), "plan.json: [0].gamma: Input should be greater than 0"),
    "gamma above one": (tiny_options(), tiny_plan(gamma=1.2), "plan.json: [0].gamma: Input should be less than or equal to 1"),
    "cell batch size": (tiny_options(batch_size=0), tiny_plan(), "options.json: batch_size: Input should be greater than or equal to 1"),
    "round batch size": (tiny_options(), tiny_plan(batch_size=0), "plan.json: [0].batch_size: Input should be greater than or equal to 1"),
    "empty plan": (tiny_options(), [], "plan.json: (top level): List should have at least 1 item"),
    "partition ids": (tiny_options(partition={"train": ["sub000", "nobody"], "validation": ["sub001"]}), tiny_plan(), "options.json: partition: unknown subject id(s) ['nobody']"),
    "empty train set": (tiny_options(partition={"train": [], "validation": ["sub001"]}), tiny_plan(), "options.json: partition.train: List should have at least 1 item"),
    "empty validation set": (tiny_options(partition={"train": ["sub000"], "validation": []}), tiny_plan(), "options.json: partition.validation: List should have at least 1 item"),
    "dataset folder": (tiny_options(dataset={"kind": "path", "path": "/nonexistent/flatmaps"}), tiny_plan(), "options.json: dataset.path /nonexistent/flatmaps: no such folder"),
    "no pretrained weights": (tiny_options(pretrained=True), tiny_plan(), "options.json: pretrained: ImageNet weights for resnet18 not found; put torchvision's resnet18-f37072fd.pth at"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_clear_line_and_exit_2(case, make_cell, capsys, monkeypatch, tmp_path):
    options, plan, message = BAD_INPUTS[case]
    monkeypatch.setenv("AUTOLABEL_WEIGHTS", str(tmp_path / "no-weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cell = make_cell(options if options is not None else {}, plan)
    if options is None:
        (cell / "options.json").unlink()
    assert train.main([str(cell)]) == 2
    out = capsys.readouterr()
    assert out.err.startswith(str(cell / message.split(":")[0]) + ":"), out.err
    assert message in out.err and "Traceback" not in out.err
    if options is not None:  # a cell that exists records why it failed
        m = metrics_of(cell)
        assert m.status == "failed" and message in m.message
    else:
        assert not (cell / "metrics.json").exists()


def test_non_finite_features_are_bad_input(make_cell, capsys, tmp_path):
    import numpy as np

    from autolabel.datasets.format import CHANNELS, LABELS, write_dataset

    rng = np.random.default_rng(0)
    subjects = {}
    for i in range(4):
        features = rng.normal(size=(len(CHANNELS), 32, 32)).astype(np.float32)
        labels = {k: (rng.random((len(v), 32, 32)) > 0.5).astype(np.uint8) for k, v in LABELS.items()}
        subjects[f"s{i}"] = (features, labels)
    subjects["s1"][0][3, 5, 5] = np.nan
    write_dataset(tmp_path / "flatmaps", subjects)
    cell = make_cell(tiny_options(dataset={"kind": "path", "path": str(tmp_path / "flatmaps")}, partition=0.25))
    assert train.main([str(cell)]) == 2
    assert "options.json: dataset: the training features contain NaN or infinite values" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_is_bad_input(make_cell, capsys):
    cell = make_cell(tiny_options(device="cuda"))
    assert train.main([str(cell)]) == 2
    assert "options.json: device: cuda is not available on this machine" in capsys.readouterr().err


# ----------------------------------------------------------------------------- several cells, flags


def test_each_cell_is_independent_and_the_worst_exit_code_wins(make_cell, capsys):
    diverging = make_cell(small_options(), DIVERGING_PLAN, name="diverging")
    bad = make_cell(small_options(), tiny_plan(lr=-1), name="bad")
    good = make_cell(small_options(), tiny_plan(), name="good")
    assert train.main([str(diverging), str(bad), str(good)]) == 2
    assert [metrics_of(c).status for c in (diverging, bad, good)] == ["diverged", "failed", "complete"]
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("[good] repeat round epoch") for line in out)
    assert worst([0, 3, 2, 1]) == 1 and worst([0, 3]) == 3 and worst([0, 0]) == 0


def test_a_stop_requested_before_a_cell_starts_leaves_it_for_the_rerun(make_cell):
    waiting = make_cell(small_options(), tiny_plan(), "waiting")
    assert train.train_cells([str(waiting)], RunControl(stop_requested=True), workers=1) == 143
    assert not (waiting / "history.csv").exists()


# The flag through `python -m autolabel` (the package's own entry point, the same main), the
# variable through `python -m autolabel.train`.
@pytest.mark.parametrize(
    "module, args, env, shown",
    [("autolabel", ["--checkpoint-every", "-1"], {}, "--checkpoint-every: expected seconds >= 0, got '-1'"),
     ("autolabel.train", [], {CHECKPOINT_ENV: "soon"}, "$AUTOLABEL_CHECKPOINT_EVERY_S: expected seconds >= 0, got 'soon'")],
)  # fmt: skip
def test_a_bad_checkpoint_interval_is_refused_before_any_cell(make_cell, module, args, env, shown):
    cell = make_cell(small_options(), tiny_plan())
    done = cli(str(cell), *args, module=module, env=os.environ | env)
    assert done.returncode == 2 and shown in done.stderr and "Traceback" not in done.stderr
    assert not (cell / "history.csv").exists()


def test_the_command_line_imports_torch_only_to_train():
    # A refused flag, and a pack's supervisor of worker processes, start in a fraction of a second.
    code = "import sys; import autolabel.train, autolabel.pack; print(sorted(m for m in sys.modules if m.startswith('torch')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


# ----------------------------------------------------------------------------- stopping alone, and a busy cell


@pytest.mark.parametrize("signals, code", [
    ((signal.SIGINT,), 130),                  # Ctrl-C to the trainer's process group, as a terminal sends it
    ((signal.SIGHUP,), 129),
    ((signal.SIGINT, signal.SIGTERM), 130),   # the terminal's Ctrl-C and the flow's SIGTERM: one stop
], ids=["ctrl-c", "sighup", "ctrl-c-and-sigterm"])
def test_a_trainer_alone_checkpoints_the_epoch_in_progress_on_any_stop(make_cell, signals, code):
    cell = make_cell(small_options(), tiny_plan(rounds=2, epochs=3))
    proc = subprocess.Popen([sys.executable, "-m", "autolabel.train", str(cell)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (cell / "history.csv").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        seen = len(history_rows(cell))
        for s in signals:
            os.killpg(proc.pid, s)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == code, err
    assert "Traceback" not in err and "stopped by" in err and "checkpoint.pt is saved" in err
    # The epoch in progress, if the signal came during one, is finished and kept; a signal that
    # lands between two epochs (while the last one's files are written) keeps what was seen.
    # Either way the epoch the trainer says it saved is the last row on disk.
    where = re.search(r"after repeat 0 round (\d) epoch (\d); checkpoint.pt is saved", err)
    assert where, err
    saved = 3 * int(where.group(1)) + int(where.group(2))
    assert (cell / "checkpoint.pt").exists() and len(history_rows(cell)) == saved >= seen

    assert train.main([str(cell)]) == 0  # the rerun resumes there (in this process)
    assert epoch_keys(history_rows(cell)) == [("0", str(r), str(e)) for r in range(2) for e in (1, 2, 3)]


def test_a_busy_cell_exits_75_untouched(make_cell):
    from autolabel.lock import FolderLock

    cell = make_cell(small_options(), tiny_plan())
    before = sorted(p.name for p in cell.iterdir())
    with FolderLock(cell):
        result = cli(str(cell))
        assert sorted(p.name for p in cell.iterdir()) == sorted(before + [".lock"])
    assert result.returncode == 75 and f"busy: held by pid {os.getpid()}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- --until-round (halving cuts)


def test_until_round_pauses_at_a_round_boundary_and_a_later_run_trains_on_to_the_same_result(make_cell, capsys):
    """A paused cell keeps its checkpoint and no metrics.json, exits 0; resumed, it ends as an
    uninterrupted cell does, and the cut's score read back from history.csv is the trainer's own."""
    from autolabel.celldir import read_history
    from autolabel.scores import score_at

    options, plan = small_options(until=2), tiny_plan(rounds=2, epochs=2)
    paused, straight = make_cell(options, plan, name="paused"), make_cell(options, plan, name="straight")
    assert train.main([str(paused), "--until-round", "1"]) == 0
    assert (paused / "checkpoint.pt").exists() and not (paused / "metrics.json").exists()
    assert epoch_keys(history_rows(paused)) == [("0", "0", "1"), ("0", "0", "2")]
    assert "paused after 1 rounds (--until-round)" in (paused / "training.log").read_text()
    assert train.main([str(paused), "--until-round", "1"]) == 0  # already there: nothing more is trained
    assert len(history_rows(paused)) == 2
    assert train.main([str(paused), "--until-round", "3"]) == 0  # across the repeat boundary
    assert len(history_rows(paused)) == 6 and not (paused / "metrics.json").exists()
    assert train.main([str(paused)]) == 0 and train.main([str(straight)]) == 0
    a, b = metrics_of(paused), metrics_of(straight)
    assert (a.best_val_dice_loss, a.mean_dice, a.best_repeat, a.best_round, a.epochs) == \
        (b.best_val_dice_loss, b.mean_dice, b.best_repeat, b.best_round, b.epochs)
    assert [(r["val_loss"], r["val_dice"]) for r in history_rows(paused)] == \
        [(r["val_loss"], r["val_dice"]) for r in history_rows(straight)]
    end = score_at(read_history(paused), [2, 2], 4)
    assert (end.val_dice_loss, end.mean_dice, end.repeat, end.round, end.epoch) == \
        (a.best_val_dice_loss, a.mean_dice, a.best_repeat, a.best_round, a.best_epoch)
    with pytest.raises(SystemExit) as bad:
        train.main([str(paused), "--until-round", "0"])
    assert bad.value.code == 2 and "--until-round: must be at least 1" in capsys.readouterr().err
