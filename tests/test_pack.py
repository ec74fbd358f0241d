"""Packed training on tiny CPU cells: same results as solo runs, independent failures, kill and resume."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autolabel import pack, train
from autolabel.cell import run_cell
from autolabel.control import RunControl
from tests.conftest import (
    DIVERGING_PLAN,
    SMALL,
    epoch_keys,
    history_rows,
    metrics_of,
    tiny_options,
    tiny_plan,
)

# Two shared cores: one thread per process, and the same arithmetic in workers and in solo runs.
pytestmark = pytest.mark.usefixtures("one_thread")


def options(seed: int = 0) -> dict:
    return tiny_options(dataset=SMALL, seed=seed)


def history_keys(cell: Path) -> list[tuple[str, str, str]]:
    return epoch_keys(history_rows(cell))


def start_pack(*cells: Path, layout: tuple[str, ...] | None = None) -> subprocess.Popen:
    layout = layout or ("--workers", str(len(cells)))
    cmd = [sys.executable, "-m", "autolabel.train", *map(str, cells), *layout]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def wait_for(condition, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# ----------------------------------------------------------------------------- plain functions


def test_exit_code_rules():
    assert pack.exit_code(-signal.SIGKILL) == 137 and pack.exit_code(3) == 3
    assert pack.pack_exit([0, 3, 137, 2]) == 137  # a killed worker: retry (complete cells are skipped)
    assert pack.pack_exit([0, 3, 2]) == 2 and pack.pack_exit([0, 0]) == 0


def test_layout_defaults_threads_on_cuda_one_by_one_elsewhere():
    assert pack.layout(5, "cpu", None, None) == (1, 1)  # one after another
    assert pack.layout(20, "cuda", None, None) == (1, 16)  # one process, 16 threads at a time
    assert pack.layout(3, "cuda", None, None) == (1, 3)
    assert pack.layout(1, "cuda", None, None) == (1, 1)
    assert pack.layout(6, "cuda", 3, None) == (3, 1)  # --workers alone: a cell per process
    assert pack.layout(40, "cuda", None, 8) == (5, 8)  # --threads alone: processes of 8 threads
    assert pack.layout(5, "cpu", 2, 2) == (2, 2) and pack.layout(3, "cpu", 4, 2) == (2, 2)


def test_cpu_defaults_to_one_worker_and_splits_threads(monkeypatch):
    assert pack.default_workers(5, "cpu") == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    assert pack.worker_env(3)["OMP_NUM_THREADS"] == "2"
    assert pack.worker_env(16)["OMP_NUM_THREADS"] == "1"


# ----------------------------------------------------------------------------- through the CLI


@pytest.mark.slow
@pytest.mark.parametrize(
    "layout",
    [("--threads", "3"), ("--workers", "2", "--threads", "2")],
    ids=["three-threads-one-process", "two-processes-of-two-threads"],
)
def test_packed_cells_match_solo_runs_and_one_diverges_alone(make_cell, capsys, layout):
    cells = [make_cell(options(1), tiny_plan(epochs=2), "a"), make_cell(options(2), tiny_plan(epochs=2), "b")]
    diverging = make_cell(options(), DIVERGING_PLAN, "diverging")
    proc = start_pack(*cells, diverging, layout=layout)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err  # diverged, the worst of the three
    assert [metrics_of(c).status for c in (*cells, diverging)] == ["complete", "complete", "diverged"]
    assert "diverging: diverged" in err or "[diverging] " in err and "diverged" in err
    lines = out.splitlines()
    assert all(line.startswith(("[a] ", "[b] ", "[diverging] ")) for line in lines)
    assert any(line.startswith("[b] repeat round epoch") for line in lines)

    # A packed cell trained alone in this process: same seed, one thread, the same numbers.
    packed = cells[1]
    solo = make_cell((packed / "options.json").read_text(), (packed / "plan.json").read_text(), "solo")
    assert run_cell(str(solo), RunControl()) == 0
    assert metrics_of(solo).dice == pytest.approx(metrics_of(packed).dice, abs=1e-6)
    assert metrics_of(solo).best_val_dice_loss == pytest.approx(metrics_of(packed).best_val_dice_loss, abs=1e-6)
    # Different seeds really differ, so a mix-up of cells would show.
    assert metrics_of(cells[0]).best_val_dice_loss != metrics_of(cells[1]).best_val_dice_loss


@pytest.mark.slow
def test_sigterm_and_sigkill_reach_the_workers_and_a_rerun_resumes(make_cell, capsys):
    cells = [make_cell(options(1), tiny_plan(rounds=3, epochs=2), n) for n in ("a", "b")]
    want = [("0", str(r), str(e)) for r in range(3) for e in (1, 2)]

    # 1. SIGTERM: forwarded; each worker finishes its epoch in progress, checkpoints it and exits.
    proc = start_pack(*cells)
    try:
        wait_for(lambda: all((c / "history.csv").exists() for c in cells), proc)
        workers = children(proc.pid)
        assert len(workers) == 2
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err  # terminated: transient, a retry resumes
    assert not any(alive(w) for w in workers)
    for c in cells:
        assert (c / "checkpoint.pt").exists() and not (c / "metrics.json").exists()
        assert f"[{c.name}] " in err and "stopped by SIGTERM after repeat 0" in err
    rows = {c: len(history_keys(c)) for c in cells}

    # 2. SIGKILL of the parent: PR_SET_PDEATHSIG kills the workers, no orphan keeps writing.
    proc = start_pack(*cells)
    try:
        # Killed at the first new epoch of either cell: waiting for one more epoch of each let the cell
        # ahead (under load one worker can start seconds after the other) finish before the kill.
        wait_for(lambda: any(len(history_keys(c)) > rows[c] for c in cells), proc)
        workers = children(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while any(alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert workers and not any(alive(w) for w in workers)
    finally:
        proc.kill()
        proc.communicate()
    assert not any((c / "metrics.json").exists() for c in cells)

    # 3. The rerun resumes both cells from their checkpoints and completes them (in this process, a
    # thread each: a worker process's start is a torch import).
    assert train.main([*map(str, cells), "--threads", "2"]) == 0
    out = capsys.readouterr().out
    for c in cells:
        assert history_keys(c) == want  # no duplicated or missing epochs
        assert metrics_of(c).status == "complete" and metrics_of(c).epochs == 6
        assert f"[{c.name}] resumed from checkpoint.pt" in out


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum, code, name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")], ids=["SIGTERM", "Ctrl-C"]
)
def test_a_stop_reaches_every_thread_and_starts_no_more_cells(make_cell, signum, code, name, monkeypatch, capsys):
    # An hour between checkpoints: only the stop writes one. Run as the image runs it, `-m autolabel.train`.
    monkeypatch.setenv("AUTOLABEL_CHECKPOINT_EVERY_S", "3600")
    running = [make_cell(options(1), tiny_plan(rounds=3, epochs=2), n) for n in ("a", "b")]
    queued = make_cell(options(2), tiny_plan(), "queued")
    proc = start_pack(*running, queued, layout=("--threads", "2"))
    try:
        wait_for(lambda: all((c / "history.csv").exists() for c in running), proc)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    for c in running:
        assert (c / "checkpoint.pt").exists() and not (c / "metrics.json").exists()
        assert f"{c}: stopped by {name} after repeat 0" in err  # the epoch in progress was saved
        assert len(history_keys(c)) < 6
    assert not (queued / "history.csv").exists()  # never started: it waits for the rerun
    assert "Traceback" not in err

    # The rerun, in this process (a process start is a torch import): the same two threads.
    assert train.main([*map(str, running), str(queued), "--threads", "2"]) == 0
    out = capsys.readouterr().out
    assert all(metrics_of(c).status == "complete" for c in (*running, queued))
    assert all(f"[{c.name}] resumed from checkpoint.pt" in out for c in running)
