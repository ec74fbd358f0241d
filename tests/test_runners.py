"""The local runner's outcome table and its real subprocess launches."""

import signal
import sys
from pathlib import Path

import pytest

from autolabel.options import CellOptions, Plan, Round
from flows.cells import Cell, cell_dir
from flows.runners import LocalRunner, classify_exit, pack_outcomes


@pytest.mark.parametrize(
    "code, outcome, words",
    [
        (0, "ok", "complete"),
        (-signal.SIGKILL, "transient", "SIGKILL"),
        (-signal.SIGTERM, "transient", "SIGTERM"),
        (137, "transient", "out of memory"),
        (143, "transient", "SIGTERM"),
        (None, "transient", "infrastructure"),
        (2, "permanent", "invalid"),
        (3, "permanent", "diverged"),
        (1, "permanent", "trainer error"),
    ],
)
def test_classify_exit(code, outcome, words):
    got, detail = classify_exit(code)
    assert got == outcome and words in detail


def make_cell(grid: Path, name: str) -> Cell:
    cell = Cell(id=name, label=name, options=CellOptions(), plan=Plan([Round(lr=0.01, bce_weight=0.5)]))
    cell_dir(grid, cell).mkdir(parents=True)
    return cell


def test_local_runner_tees_output_and_reports_the_signal(tmp_path):
    stand_in = tmp_path / "python"
    stand_in.write_text(f"#!{sys.executable}\nimport os, signal\nprint('epoch 1 done', flush=True)\n"
                        "os.kill(os.getpid(), signal.SIGKILL)\n")
    stand_in.chmod(0o755)
    cells = [make_cell(tmp_path, "a"), make_cell(tmp_path, "b")]
    lines = []
    attempt = LocalRunner(tmp_path, max_parallel=2, python=str(stand_in), gpus=[]).run(cells, lines.append)
    assert attempt.outcome == "transient" and attempt.exit_code == -signal.SIGKILL and attempt.usd == 0.0
    assert lines == ["epoch 1 done"]
    for c in cells:
        log = (cell_dir(tmp_path, c) / "runner.log").read_text()
        assert log.startswith(f"$ {stand_in} -m autolabel.train") and "epoch 1 done" in log
    assert pack_outcomes(tmp_path, cells, "failed: killed") == {"a": "failed: killed", "b": "failed: killed"}


def test_local_runner_bills_what_this_machine_costs_when_asked(tmp_path):
    stand_in = tmp_path / "python"
    stand_in.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(0.2)\n")
    stand_in.chmod(0o755)
    runner = LocalRunner(tmp_path, max_parallel=1, python=str(stand_in), gpus=[], local_usd_per_hour=3600.0)
    attempt = runner.run([make_cell(tmp_path, "a")], lambda _: None)
    assert attempt.outcome == "ok" and attempt.usd >= 0.2 and attempt.device_seconds == 0.0
    assert runner.threads >= 1
