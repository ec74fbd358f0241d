"""The local runner's outcome table and its real subprocess launches."""

import os
import signal
import sys
from pathlib import Path

import pytest

from autolabel.options import CellOptions, Plan, Round
from flows.run.local import LocalRunner
from flows.run.outcomes import classify_exit
from flows.spec.cells import Cell, CellOutcome, cell_dir
from tests.conftest import grid_cells, pack_of, pricing_for


@pytest.mark.parametrize(
    "code, outcome, words",
    [
        (0, "ok", "complete"),
        (-signal.SIGKILL, "transient", "SIGKILL"),
        (-signal.SIGTERM, "transient", "SIGTERM"),
        (137, "transient", "out of memory"),
        (143, "transient", "SIGTERM"),
        (130, "transient", "Ctrl-C"),
        (129, "transient", "SIGHUP"),
        (75, "transient", "busy"),  # a dying trainer of a killed flow still holds the cell: retry later
        (74, "transient", "disk is full"),  # this machine's fault: free space, the cell resumes
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


def stand_in(tmp_path: Path, body: str) -> list[str]:
    """A trainer command: a script run by this Python (cell folders and --force follow as arguments)."""
    script = tmp_path / "trainer.py"
    script.write_text(body)
    return [sys.executable, str(script)]


def test_local_runner_tees_output_and_reports_the_signal(tmp_path):
    trainer = stand_in(tmp_path, "import os, signal\nprint('epoch 1 done', flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n")
    cells = [make_cell(tmp_path, "a"), make_cell(tmp_path, "b")]
    lines = []
    attempt = LocalRunner(tmp_path, pricing_for(max_parallel=2), trainer=trainer, gpus=[]).run(pack_of(*cells), lines.append)
    assert attempt.outcome == "transient" and attempt.exit_code == -signal.SIGKILL and attempt.usd == 0.0
    assert lines == ["epoch 1 done"]
    for c in cells:
        log = (cell_dir(tmp_path, c) / "runner.log").read_text()
        assert log.startswith(f"$ {' '.join(trainer)} {cell_dir(tmp_path, 'a')} {cell_dir(tmp_path, 'b')}\n")
        assert "epoch 1 done" in log
    killed = CellOutcome("failed", attempt.detail, -signal.SIGKILL)
    assert attempt.outcomes == {"a": killed, "b": killed}


def test_a_failed_attempt_carries_the_trainers_own_last_word(tmp_path):
    """summary.md then says why, not just "exit 74"."""
    trainer = stand_in(tmp_path, "import sys\nprint('training', flush=True)\n"
                                 "print('cell: disk full at /data/cell/checkpoint.pt; free space, then rerun', flush=True)\n"
                                 "sys.exit(74)\n")
    cell = make_cell(tmp_path, "a")
    attempt = LocalRunner(tmp_path, pricing_for(), trainer=trainer, gpus=[]).run(pack_of(cell), lambda _: None)
    assert attempt.outcome == "transient" and attempt.detail.startswith("exit 74: a disk is full")
    assert attempt.detail.endswith("disk full at /data/cell/checkpoint.pt; free space, then rerun")
    assert attempt.outcomes["a"].reason == attempt.detail


def test_a_fused_pack_asks_the_trainer_for_fused(tmp_path):
    trainer = stand_in(tmp_path, "import sys\nprint(' '.join(sys.argv[1:]), flush=True)\n")
    cells = [make_cell(tmp_path, "a"), make_cell(tmp_path, "b")]
    lines: list[str] = []
    LocalRunner(tmp_path, pricing_for(), trainer=trainer, gpus=[]).run(pack_of(*cells, fused=True), lines.append,
                                                                        force=True)
    assert lines[0].split()[-2:] == ["--force", "--fused"]


def test_local_runner_bills_the_rate_it_is_given(tmp_path):
    trainer = stand_in(tmp_path, "import time\ntime.sleep(0.2)\n")
    runner = LocalRunner(tmp_path, pricing_for(max_parallel=1, usd_per_hour=3600.0), trainer=trainer, gpus=[])
    attempt = runner.run(pack_of(make_cell(tmp_path, "a")), lambda _: None)
    assert attempt.outcome == "ok" and attempt.usd >= 0.2 and attempt.device_seconds == 0.0
    assert attempt.usd == pytest.approx(attempt.extra["wall_seconds"], rel=0.05)  # $1 a second


def test_local_runner_runs_autolabel_train_by_default(tmp_path):
    assert LocalRunner(tmp_path, pricing_for(max_parallel=1), gpus=[]).trainer == [sys.executable, "-m", "autolabel.train"]


@pytest.mark.parametrize("max_parallel", [1, 2, 64])
def test_cpu_cells_share_the_cores_without_oversubscribing(tmp_path, max_parallel):
    """What the trainer sees: OMP/MKL threads = the cores split among parallel packs, at least 1 each."""
    trainer = stand_in(tmp_path, "import os\nprint(os.environ['OMP_NUM_THREADS'], os.environ['MKL_NUM_THREADS'])\n")
    lines = []
    LocalRunner(tmp_path, pricing_for(max_parallel=max_parallel), trainer=trainer, gpus=[]).run(pack_of(make_cell(tmp_path, "a")),
                                                                                   lines.append)
    omp, mkl = map(int, lines[0].split())
    cores = os.cpu_count() or 1
    assert omp == mkl and omp >= 1
    assert omp * max_parallel <= max(cores, max_parallel)  # never more threads than cores, but one each
    if max_parallel == 1:
        assert omp == cores  # a lone pack gets every core
    if max_parallel > cores:
        assert omp == 1


def test_a_gpu_pack_sees_only_its_gpu(tmp_path):
    trainer = stand_in(tmp_path, "import os\nprint(os.environ['CUDA_VISIBLE_DEVICES'])\n")
    lines = []
    runner = LocalRunner(tmp_path, pricing_for(max_parallel=1, usd_per_hour=3600.0), trainer=trainer, gpus=["3"])
    attempt = runner.run(pack_of(make_cell(tmp_path, "a")), lines.append)
    assert lines[0].split()[0] == "3" and attempt.extra["gpu"] == "3"
    assert attempt.device_seconds > 0 and attempt.usd == pytest.approx(attempt.device_seconds, rel=0.05)


def test_stop_sends_sigterm_to_running_trainers_and_starts_no_more(tmp_path):
    import threading

    trainer = stand_in(tmp_path, "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(143))\n"
                                 "print('training', flush=True)\ntime.sleep(60)\n")
    runner = LocalRunner(tmp_path, pricing_for(max_parallel=1), trainer=trainer)
    cells = grid_cells({"lr": [0.002, 0.003]})
    for c in cells:
        cell_dir(tmp_path, c).mkdir(parents=True)
    started = threading.Event()
    result = {}
    t = threading.Thread(target=lambda: result.update(a=runner.run(pack_of(*cells[:1]), lambda line: started.set())))
    t.start()
    assert started.wait(30)
    runner.stop()
    t.join(10)
    assert not t.is_alive() and result["a"].exit_code == 143 and result["a"].outcome == "transient"
    assert runner.run(pack_of(*cells[1:]), print).exit_code == -signal.SIGTERM  # never started after the stop
