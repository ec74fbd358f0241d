"""One cell trained in this process (autolabel.cell): rounds and repeats, resume, divergence, checkpoints, S3."""

from __future__ import annotations

import json

import pytest

from autolabel import cell as cell_mod
from autolabel import storage
from autolabel.control import CHECKPOINT_ENV, RunControl
from autolabel.errors import EXIT_ERROR, EXIT_NO_SPACE, EXIT_TERMINATED
from autolabel.options import CellMetrics
from flows.run.outcomes import classify_exit
from tests.conftest import (
    DIVERGING_PLAN,
    SMALL,
    epoch_keys,
    history_rows,
    metrics_of,
    s3_read_json,
    tiny_options,
    tiny_plan,
)

NUMERIC = ("lr", "train_bce", "train_dice", "train_loss", "val_bce", "val_dice", "val_loss", "val_mean_dice")

pytestmark = pytest.mark.usefixtures("one_thread", "torch_one_thread")


def small_options(**overrides) -> dict:
    return tiny_options(dataset=SMALL, **overrides)


def run(cell, force: bool = False, say=print, control: RunControl | None = None) -> int:
    return cell_mod.run_cell(str(cell), control or RunControl(), force, say=say)


class Interrupt(Exception):
    """Raised from the log callback to stop training between an epoch and its checkpoint."""


def interrupt_at(row_prefix: str):
    def say(line: str) -> None:
        if line.split()[:3] == row_prefix.split():
            raise Interrupt(line)

    return say


# ----------------------------------------------------------------------------- rounds, repeats, optimizer


def test_best_round_and_repeat_are_kept(make_cell, capsys):
    cell = make_cell(small_options(until=2), tiny_plan(rounds=2, epochs=1))
    assert run(cell) == 0
    m = metrics_of(cell)
    assert [(r.repeat, r.round) for r in m.rounds] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert len(m.repeats) == 2 and m.epochs == 4
    best = min(m.repeats, key=lambda r: r.val_dice_loss)
    assert (m.best_repeat, m.best_round, m.best_val_dice_loss) == (best.repeat, best.best_round, best.val_dice_loss)
    # Repeats start from different initialisations, so their first epochs differ.
    rows = history_rows(cell)
    assert rows[0]["train_loss"] != rows[2]["train_loss"]


# ----------------------------------------------------------------------------- resume


@pytest.mark.usefixtures("checkpoint_every_epoch")
def test_resume_continues_exactly_where_it_stopped(make_cell, capsys):
    plan = tiny_plan(rounds=2, epochs=2)
    reference = make_cell(small_options(), plan, name="reference")
    assert run(reference) == 0

    cell = make_cell(small_options(), plan, name="interrupted")
    # Stop after round 1 epoch 1 has trained but before its checkpoint: like a kill there.
    assert run(cell, say=interrupt_at("0 1 1")) == EXIT_ERROR
    assert "Interrupt" in capsys.readouterr().err
    assert len(history_rows(cell)) == 2 and not (cell / "metrics.json").exists()
    assert run(cell) == 0

    got, want = history_rows(cell), history_rows(reference)
    assert epoch_keys(got) == epoch_keys(want)
    for g, w in zip(got, want):
        assert [float(g[k]) for k in NUMERIC] == pytest.approx([float(w[k]) for k in NUMERIC], rel=1e-5)
    assert "resumed from checkpoint.pt at repeat 0 round 1 epoch 1" in (cell / "training.log").read_text()
    assert metrics_of(cell).epochs == 4


def test_a_garbage_checkpoint_names_the_file_to_delete_and_temporaries_of_a_kill_go(make_cell, capsys):
    cell = make_cell(small_options(), tiny_plan())
    (cell / "checkpoint.pt").write_bytes(b"not a checkpoint")
    left = [cell / ".checkpoint.pt.k2j4_x.tmp", cell / ".history.csv.a1b2c3.tmp"]  # a trainer killed mid-write
    for tmp in left:
        tmp.write_bytes(b"\0" * 1000)
    lines: list[str] = []
    assert run(cell, say=lines.append) == 2
    err = capsys.readouterr().err
    assert f"{cell / 'checkpoint.pt'}: unreadable" in err and "delete this file to train this cell from scratch" in err
    assert "--force" not in err.split("(the trainer's")[0], "the flow's --force would retrain every cell"
    assert not any(t.exists() for t in left)
    assert any("removed 2 temporary file(s) a killed trainer left" in line for line in lines)
    (cell / "checkpoint.pt").unlink()  # what the message says
    assert run(cell) == 0 and metrics_of(cell).status == "complete"


@pytest.mark.usefixtures("checkpoint_every_epoch")
def test_foreign_checkpoint_is_refused_and_force_starts_over(make_cell, capsys):
    cell = make_cell(small_options(), tiny_plan(rounds=2))
    assert run(cell, say=interrupt_at("0 1 1")) == EXIT_ERROR
    assert (cell / "checkpoint.pt").exists()
    (cell / "plan.json").write_text(json.dumps(tiny_plan(rounds=1)))
    capsys.readouterr()
    assert run(cell) == 2
    assert "checkpoint.pt: written for different options.json/plan.json" in capsys.readouterr().err

    assert run(cell, force=True) == 0  # the checkpoint is ignored, training starts over
    first = (cell / "metrics.json").read_text()
    assert len(history_rows(cell)) == 1 and metrics_of(cell).status == "complete"
    assert not (cell / "checkpoint.pt").exists()

    lines: list[str] = []
    assert run(cell, say=lines.append) == 0
    assert any("complete, skipped (rerun with --force" in line for line in lines)
    assert (cell / "metrics.json").read_text() == first

    assert run(cell, force=True) == 0  # a complete cell is retrained
    assert (cell / "metrics.json").read_text() != first and len(history_rows(cell)) == 1


# ----------------------------------------------------------------------------- divergence, checkpoints, stops


def test_a_batch_of_one_32x32_image_is_refused_before_training(make_cell, capsys):
    """BatchNorm would meet one value per channel at the encoder's 1x1 deepest level."""
    options = tiny_options(batch_size=1, dataset={"kind": "synthetic", "subjects": 8, "rows": 32, "cols": 32})
    cell = make_cell(options, tiny_plan())
    assert run(cell) == 2
    err = capsys.readouterr().err
    assert "options.json: batch_size: a batch of 1 image of 32x32" in err and "Traceback" not in err
    assert metrics_of(cell).status == "failed" and not (cell / "history.csv").exists()


def test_a_full_disk_is_the_machines_fault_not_the_cells(small_disk, capsys):
    """A cell on a full disk cannot even be locked: one line, exit 74 (transient: the flow retries
    it), not 2 (bad input, never retried); with space again it trains."""
    from tests.conftest import fill

    disk = small_disk(300 * 1024)  # room for the cell's model.pt and checkpoint once space is freed
    cell = disk / "cell"
    cell.mkdir()
    (cell / "options.json").write_text(json.dumps(small_options()))
    (cell / "plan.json").write_text(json.dumps(tiny_plan()))
    filler = fill(disk)
    assert run(cell) == EXIT_NO_SPACE == 74
    err = capsys.readouterr().err
    assert f"disk full at {cell}/.lock" in err and "free space, then rerun" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not (cell / "metrics.json").exists()
    assert classify_exit(EXIT_NO_SPACE)[0] == "transient"
    filler.unlink()
    assert run(cell) == 0 and metrics_of(cell).status == "complete"


def test_a_cut_metrics_json_is_rebuilt_from_model_and_history_not_retrained(make_cell):
    cell = make_cell(small_options(until=2), tiny_plan(rounds=2))
    assert run(cell) == 0
    first = metrics_of(cell)
    model, history = (cell / "model.pt").read_bytes(), (cell / "history.csv").read_bytes()
    text = (cell / "metrics.json").read_text()
    (cell / "metrics.json").write_text(text[: len(text) // 2])  # cut in half
    lines: list[str] = []
    assert run(cell, say=lines.append) == 0
    again = metrics_of(cell)
    assert (cell / "model.pt").read_bytes() == model and (cell / "history.csv").read_bytes() == history
    assert any(f"{cell / 'metrics.json'}: unreadable metrics.json" in x and "rebuilt from model.pt" in x for x in lines)
    assert again.status == "complete" and again.message.startswith("rebuilt from model.pt and history.csv")
    for field in ("best_val_dice_loss", "dice", "mean_dice", "rounds", "repeats", "best_repeat", "best_round",
                  "best_epoch", "epochs"):
        assert getattr(again, field) == pytest.approx(getattr(first, field)), field

    # Without model.pt nothing shows the cell finished: it trains again.
    (cell / "metrics.json").write_text("{")
    (cell / "model.pt").unlink()
    lines.clear()
    assert run(cell, say=lines.append) == 0
    assert any("do not show a finished cell: training it again" in x for x in lines)
    assert metrics_of(cell).message == "" and (cell / "model.pt").is_file()


def test_nan_loss_ends_the_cell_as_diverged(make_cell, capsys):
    cell = make_cell(small_options(), DIVERGING_PLAN)
    assert run(cell) == 3
    m = metrics_of(cell)
    assert m.status == "diverged" and "nan" in m.message and m.epochs == 1
    assert "diverged" in capsys.readouterr().err
    assert len(history_rows(cell)) == 1 and "diverged:" in (cell / "training.log").read_text()


def test_checkpoints_follow_the_interval_and_a_stop_always_saves(make_cell, monkeypatch, capsys):
    saves: list[str] = []
    real_save = cell_mod.save_checkpoint

    def counting_save(cell, *args) -> None:  # counts, then saves for real
        saves.append(cell.work.name)
        real_save(cell, *args)

    monkeypatch.setattr(cell_mod, "save_checkpoint", counting_save)
    # An hour between checkpoints: a 3-epoch cell finishes before the first one is due.
    monkeypatch.setenv(CHECKPOINT_ENV, "3600")
    hourly = make_cell(small_options(), tiny_plan(epochs=3), "hourly")
    assert run(hourly) == 0 and saves == [] and metrics_of(hourly).epochs == 3
    # 0: after every epoch.
    monkeypatch.setenv(CHECKPOINT_ENV, "0")
    every = make_cell(small_options(), tiny_plan(epochs=3), "every")
    assert run(every) == 0 and saves == ["every"] * 3

    # An hour again, but a stop requested during epoch 1 (what autolabel.train's SIGTERM handler
    # does, without the signal) still checkpoints it; the rerun resumes there.
    saves.clear()
    monkeypatch.setenv(CHECKPOINT_ENV, "3600")
    stopped = make_cell(small_options(), tiny_plan(epochs=3), "stopped")
    control = RunControl()

    def say(line: str) -> None:
        if line.split()[:3] == ["0", "0", "1"]:
            control.request_stop("SIGTERM")

    assert run(stopped, say=say, control=control) == EXIT_TERMINATED == 143
    assert saves == ["stopped"] and (stopped / "checkpoint.pt").exists()
    assert epoch_keys(history_rows(stopped)) == [("0", "0", "1")] and not (stopped / "metrics.json").exists()
    assert "stopped by SIGTERM after repeat 0 round 0 epoch 1" in capsys.readouterr().err
    lines: list[str] = []
    assert run(stopped, say=lines.append) == 0
    assert "resumed from checkpoint.pt at repeat 0 round 0 epoch 2" in lines
    assert epoch_keys(history_rows(stopped)) == [("0", "0", "1"), ("0", "0", "2"), ("0", "0", "3")]


def test_a_stop_while_an_epochs_files_are_written_checkpoints_after_the_next_epoch(make_cell, monkeypatch, capsys):
    """The signal lands after the epoch's stop check, while history.csv is written (seen under
    load: the trainer said "checkpoint.pt is saved" and had saved none)."""
    monkeypatch.setenv(CHECKPOINT_ENV, "3600")  # only a stop writes a checkpoint
    cell = make_cell(small_options(), tiny_plan(epochs=3), "late")
    control = RunControl()
    real_write = cell_mod.write_history

    def write_then_signal(c, rows, log) -> None:
        real_write(c, rows, log)
        if len(rows) == 1:
            control.request_stop("SIGINT", 130)

    monkeypatch.setattr(cell_mod, "write_history", write_then_signal)
    assert run(cell, control=control) == 130
    assert "stopped by SIGINT after repeat 0 round 0 epoch 2; checkpoint.pt is saved" in capsys.readouterr().err
    assert (cell / "checkpoint.pt").exists() and len(history_rows(cell)) == 2


# ----------------------------------------------------------------------------- remote cells


def put_cell(bucket: str, prefix: str, options: dict, plan: list) -> str:
    client = storage.s3_client()
    for name, value in (("options.json", options), ("plan.json", plan)):
        client.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=json.dumps(value).encode())
    return f"s3://{bucket}/{prefix}"


def keys(bucket: str, prefix: str) -> list[str]:
    listing = storage.s3_client().list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
    return sorted(o["Key"][len(prefix) + 1 :] for o in listing.get("Contents", []))


@pytest.mark.usefixtures("checkpoint_every_epoch")
def test_s3_cell_trains_uploads_and_resumes(s3_bucket, capsys):
    uri = put_cell(s3_bucket, "grid/cell-1", small_options(), tiny_plan(rounds=2))
    assert run(uri, say=interrupt_at("0 1 1")) == EXIT_ERROR
    # The checkpoint, history and log of the finished epoch are already in the bucket.
    assert keys(s3_bucket, "grid/cell-1") == ["checkpoint.pt", "history.csv", "options.json", "plan.json", "training.log"]

    assert run(uri) == 0
    assert keys(s3_bucket, "grid/cell-1") == [
        "history.csv", "metrics.json", "model.pt", "options.json", "plan.json", "training.log"
    ]  # fmt: skip
    metrics = CellMetrics.model_validate(s3_read_json(f"{uri}/metrics.json"))
    assert metrics.status == "complete" and metrics.epochs == 2
    body = storage.s3_client().get_object(Bucket=s3_bucket, Key="grid/cell-1/training.log")["Body"].read().decode()
    assert "resumed from checkpoint.pt at repeat 0 round 1 epoch 1" in body

    lines: list[str] = []
    assert run(uri, say=lines.append) == 0
    assert any("complete, skipped" in line for line in lines)


def test_s3_cell_with_bad_options_records_failure(s3_bucket, capsys):
    uri = put_cell(s3_bucket, "grid/bad", small_options(inputs="everything"), tiny_plan())
    assert run(uri) == 2
    assert f"{uri}/options.json: inputs:" in capsys.readouterr().err
    assert s3_read_json(f"{uri}/metrics.json")["status"] == "failed"
