"""The trainer end to end on tiny CPU cells: files, resume, skip/--force, bad input, divergence, S3."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from autolabel import storage, train
from autolabel.options import CellMetrics
from tests.conftest import s3_read_json, tiny_options, tiny_plan

# 8 subjects at 32x32 (6 train / 2 validation): an epoch takes well under a second on one core.
SMALL = {"kind": "synthetic", "subjects": 8, "rows": 32, "cols": 32}
NUMERIC = ("lr", "train_bce", "train_dice", "train_loss", "val_bce", "val_dice", "val_loss", "val_mean_dice")


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    # Tests share two cores with each other; more threads than free cores makes OpenMP spin.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def small_options(**overrides) -> dict:
    return tiny_options(dataset=SMALL, **overrides)


def read_history(cell: Path) -> list[dict]:
    with open(cell / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def epoch_keys(rows: list[dict]) -> list[tuple[str, str, str]]:
    return [(r["repeat"], r["round"], r["epoch"]) for r in rows]


def metrics_of(cell: Path) -> CellMetrics:
    return CellMetrics.model_validate_json((cell / "metrics.json").read_text())


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autolabel.train", *args], capture_output=True, text=True, **kwargs)


class Interrupt(Exception):
    """Raised from the log callback to stop training between an epoch and its checkpoint."""


def interrupt_at(row_prefix: str):
    def say(line: str) -> None:
        if line.split()[:3] == row_prefix.split():
            raise Interrupt(line)

    return say


# ----------------------------------------------------------------------------- a whole cell


@pytest.mark.slow
def test_cli_trains_a_tiny_cell_and_writes_every_file(make_cell):
    options = tiny_options(dataset={"kind": "synthetic", "subjects": 24, "rows": 32, "cols": 64})
    cell = make_cell(options, tiny_plan(rounds=3, epochs=2))
    started = time.perf_counter()
    done = cli(str(cell), env=os.environ | {"OMP_NUM_THREADS": "1"})
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    assert seconds < 60
    assert sorted(p.name for p in cell.iterdir()) == [
        "history.csv", "metrics.json", "model.pt", "options.json", "plan.json", "training.log"
    ]  # fmt: skip  (checkpoint.pt is deleted once model.pt holds the result)

    m = metrics_of(cell)
    assert m.status == "complete" and m.epochs == 6 and m.train_images == 6 * 19
    assert set(m.dice) == {"V1", "V2", "V3"} and m.mean_dice == pytest.approx(sum(m.dice.values()) / 3)
    assert [(r.round, r.best_epoch in (1, 2)) for r in m.rounds] == [(0, True), (1, True), (2, True)]
    assert m.best_val_dice_loss == min(r.val_dice_loss for r in m.rounds)
    assert m.best_round == m.repeats[0].best_round and m.train_images_per_second > 0
    assert m.device == "cpu (1 threads)"

    rows = read_history(cell)
    assert epoch_keys(rows) == [("0", str(r), str(e)) for r in range(3) for e in (1, 2)]
    assert [float(r["lr"]) for r in rows[::2]] == pytest.approx([0.003, 0.002, 0.001])
    log = (cell / "training.log").read_text().splitlines()
    assert log == done.stdout.splitlines()  # the log is streamed to stdout line by line
    assert sum(line.split()[:1] == ["0"] for line in log) == 6

    model, info = train.load_trained(cell / "model.pt")
    assert info["channels"][-1] == "prf_cod" and info["labels"] == ["V1", "V2", "V3"]
    assert info["feature_mean"].shape == (14,) and info["options"]["inputs"] == "full"
    with torch.no_grad():
        assert model(torch.zeros(1, 14, 32, 64)).shape == (1, 3, 32, 64)


def test_best_round_and_repeat_are_kept(make_cell, capsys):
    cell = make_cell(small_options(until=2), tiny_plan(rounds=2, epochs=1))
    assert train.main([str(cell)]) == 0
    m = metrics_of(cell)
    assert [(r.repeat, r.round) for r in m.rounds] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert len(m.repeats) == 2 and m.epochs == 4
    best = min(m.repeats, key=lambda r: r.val_dice_loss)
    assert (m.best_repeat, m.best_round, m.best_val_dice_loss) == (best.repeat, best.best_round, best.val_dice_loss)
    # Repeats start from different initialisations, so their first epochs differ.
    rows = read_history(cell)
    assert rows[0]["train_loss"] != rows[2]["train_loss"]


def test_cpu_uses_every_core_unless_omp_num_threads_is_set(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS")
        train.configure_device(torch.device("cpu"))
        assert torch.get_num_threads() == len(os.sched_getaffinity(0))
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        train.configure_device(torch.device("cpu"))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------- resume


def test_resume_continues_exactly_where_it_stopped(make_cell, capsys):
    plan = tiny_plan(rounds=2, epochs=2)
    reference = make_cell(small_options(), plan, name="reference")
    assert train.main([str(reference)]) == 0

    cell = make_cell(small_options(), plan, name="interrupted")
    # Stop after round 1 epoch 1 has trained but before its checkpoint: like a kill there.
    assert train.run_cell(str(cell), say=interrupt_at("0 1 1")) == train.EXIT_ERROR
    assert "Interrupt" in capsys.readouterr().err
    assert len(read_history(cell)) == 2 and not (cell / "metrics.json").exists()
    assert train.main([str(cell)]) == 0

    got, want = read_history(cell), read_history(reference)
    assert epoch_keys(got) == epoch_keys(want)
    for g, w in zip(got, want):
        assert [float(g[k]) for k in NUMERIC] == pytest.approx([float(w[k]) for k in NUMERIC], rel=1e-5)
    assert "resumed from checkpoint.pt at repeat 0 round 1 epoch 1" in (cell / "training.log").read_text()
    assert metrics_of(cell).epochs == 4


@pytest.mark.slow
def test_resume_after_sigkill_mid_epoch(make_cell):
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
    before = read_history(cell)
    assert proc.returncode == -signal.SIGKILL and (cell / "checkpoint.pt").exists()
    assert 1 <= len(before) < 4 and not (cell / "metrics.json").exists()

    done = cli(str(cell), env=env)
    assert done.returncode == 0, done.stderr
    after = read_history(cell)
    assert epoch_keys(after) == [("0", str(r), str(e)) for r in range(2) for e in (1, 2)]
    assert after[: len(before)] == before  # resumed, not restarted: the early epochs were not retrained
    assert "resumed from checkpoint.pt" in done.stdout and "cell " not in done.stdout
    assert metrics_of(cell).epochs == 4


def test_foreign_checkpoint_is_refused_and_force_starts_over(make_cell, capsys):
    cell = make_cell(small_options(), tiny_plan(rounds=2))
    assert train.run_cell(str(cell), say=interrupt_at("0 1 1")) == train.EXIT_ERROR
    assert (cell / "checkpoint.pt").exists()
    (cell / "plan.json").write_text(json.dumps(tiny_plan(rounds=1)))
    capsys.readouterr()
    assert train.main([str(cell)]) == 2
    assert "checkpoint.pt: written for different options.json/plan.json" in capsys.readouterr().err

    assert train.main([str(cell), "--force"]) == 0  # the checkpoint is ignored, training starts over
    first = (cell / "metrics.json").read_text()
    assert len(read_history(cell)) == 1 and metrics_of(cell).status == "complete"
    assert not (cell / "checkpoint.pt").exists()

    capsys.readouterr()
    assert train.main([str(cell)]) == 0
    assert "complete, skipped (rerun with --force" in capsys.readouterr().out
    assert (cell / "metrics.json").read_text() == first

    assert train.main([str(cell), "--force"]) == 0  # a complete cell is retrained
    assert (cell / "metrics.json").read_text() != first and len(read_history(cell)) == 1


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

    from autolabel.data import CHANNELS, LABELS, write_dataset

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


# ----------------------------------------------------------------------------- divergence, several cells

# Adam at lr 10 with BCE and Dice mixed blows the validation loss up to NaN in the first epoch.
DIVERGING_PLAN = [{"lr": 10, "bce_weight": 0.5, "num_epochs": 3, "batch_size": 6}]


def test_nan_loss_ends_the_cell_as_diverged(make_cell, capsys):
    cell = make_cell(small_options(), DIVERGING_PLAN)
    assert train.main([str(cell)]) == 3
    m = metrics_of(cell)
    assert m.status == "diverged" and "nan" in m.message and m.epochs == 1
    assert "diverged" in capsys.readouterr().err
    assert len(read_history(cell)) == 1 and "diverged:" in (cell / "training.log").read_text()


def test_each_cell_is_independent_and_the_worst_exit_code_wins(make_cell, capsys):
    diverging = make_cell(small_options(), DIVERGING_PLAN, name="diverging")
    bad = make_cell(small_options(), tiny_plan(lr=-1), name="bad")
    good = make_cell(small_options(), tiny_plan(), name="good")
    assert train.main([str(diverging), str(bad), str(good)]) == 2
    assert [metrics_of(c).status for c in (diverging, bad, good)] == ["diverged", "failed", "complete"]
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("[good] repeat round epoch") for line in out)
    assert train.worst([0, 3, 2, 1]) == 1 and train.worst([0, 3]) == 3 and train.worst([0, 0]) == 0


# ----------------------------------------------------------------------------- remote cells


def put_cell(bucket: str, prefix: str, options: dict, plan: list) -> str:
    client = storage.s3_client()
    for name, value in (("options.json", options), ("plan.json", plan)):
        client.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=json.dumps(value).encode())
    return f"s3://{bucket}/{prefix}"


def keys(bucket: str, prefix: str) -> list[str]:
    listing = storage.s3_client().list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
    return sorted(o["Key"][len(prefix) + 1 :] for o in listing.get("Contents", []))


def test_s3_cell_trains_uploads_and_resumes(s3_bucket, capsys):
    uri = put_cell(s3_bucket, "grid/cell-1", small_options(), tiny_plan(rounds=2))
    assert train.run_cell(uri, say=interrupt_at("0 1 1")) == train.EXIT_ERROR
    # The checkpoint, history and log of the finished epoch are already in the bucket.
    assert keys(s3_bucket, "grid/cell-1") == ["checkpoint.pt", "history.csv", "options.json", "plan.json", "training.log"]

    assert train.main([uri]) == 0
    assert keys(s3_bucket, "grid/cell-1") == [
        "history.csv", "metrics.json", "model.pt", "options.json", "plan.json", "training.log"
    ]  # fmt: skip
    metrics = CellMetrics.model_validate(s3_read_json(f"{uri}/metrics.json"))
    assert metrics.status == "complete" and metrics.epochs == 2
    body = storage.s3_client().get_object(Bucket=s3_bucket, Key="grid/cell-1/training.log")["Body"].read().decode()
    assert "resumed from checkpoint.pt at repeat 0 round 1 epoch 1" in body

    capsys.readouterr()
    assert train.main([uri]) == 0
    assert "complete, skipped" in capsys.readouterr().out


def test_s3_cell_with_bad_options_records_failure(s3_bucket, capsys):
    uri = put_cell(s3_bucket, "grid/bad", small_options(inputs="everything"), tiny_plan())
    assert train.main([uri]) == 2
    assert f"{uri}/options.json: inputs:" in capsys.readouterr().err
    assert s3_read_json(f"{uri}/metrics.json")["status"] == "failed"


def test_checkpoints_follow_the_interval_and_a_stop_always_saves(make_cell, monkeypatch):
    saves: list[str] = []
    real_save = train.save_checkpoint

    def counting_save(cell, *args) -> None:  # counts, then saves for real
        saves.append(cell.work.name)
        real_save(cell, *args)

    monkeypatch.setattr(train, "save_checkpoint", counting_save)
    # An hour between checkpoints: a 3-epoch cell finishes before the first one is due.
    monkeypatch.setenv(train.CHECKPOINT_ENV, "3600")
    hourly = make_cell(small_options(), tiny_plan(epochs=3), "hourly")
    assert train.run_cell(str(hourly)) == 0 and saves == [] and metrics_of(hourly).epochs == 3
    # 0: after every epoch.
    monkeypatch.setenv(train.CHECKPOINT_ENV, "0")
    every = make_cell(small_options(), tiny_plan(epochs=3), "every")
    assert train.run_cell(str(every)) == 0 and saves == ["every"] * 3

    # An hour again, but SIGTERM's request during epoch 1 still checkpoints it; the rerun resumes there.
    saves.clear()
    monkeypatch.setenv(train.CHECKPOINT_ENV, "3600")
    stopped = make_cell(small_options(), tiny_plan(epochs=3), "stopped")

    def say(line: str) -> None:
        if line.split()[:3] == ["0", "0", "1"]:
            monkeypatch.setattr(train, "stop_requested", True)

    assert train.run_cell(str(stopped), say=say) == train.EXIT_TERMINATED
    assert saves == ["stopped"] and (stopped / "checkpoint.pt").exists()
    monkeypatch.setattr(train, "stop_requested", False)
    lines: list[str] = []
    assert train.run_cell(str(stopped), say=lines.append) == 0
    assert "resumed from checkpoint.pt at repeat 0 round 0 epoch 2" in lines
    assert epoch_keys(read_history(stopped)) == [("0", "0", "1"), ("0", "0", "2"), ("0", "0", "3")]


@pytest.mark.parametrize(
    "args, env, shown",
    [(["--checkpoint-every", "-1"], {}, "--checkpoint-every: expected seconds >= 0, got '-1'"),
     ([], {train.CHECKPOINT_ENV: "soon"}, "$AUTOLABEL_CHECKPOINT_EVERY_S: expected seconds >= 0, got 'soon'")],
)  # fmt: skip
def test_a_bad_checkpoint_interval_is_refused_before_any_cell(make_cell, args, env, shown):
    cell = make_cell(small_options(), tiny_plan())
    done = cli(str(cell), *args, env=os.environ | env)
    assert done.returncode == 2 and shown in done.stderr and "Traceback" not in done.stderr
    assert not (cell / "history.csv").exists()
