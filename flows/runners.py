"""Runners: where a pack of cells trains. Local subprocesses here; ECS in ``flows/ecs.py``.

Both backends run the image's own entry point, ``python -m autolabel.train CELL_DIR ...``
(the local runner any trainer command given, e.g. the tests' stand-in),
and report an :class:`Attempt`. What happened is classified in one place
(:func:`classify_exit`) so that retries mean the same thing everywhere:

- transient (retried, resuming from the checkpoint): killed by a signal, out of memory
  (137), stopped (143, 130, 129), busy (75: another trainer still holds the cell, e.g. one of a
  killed flow still checkpointing), or the infrastructure was lost;
- permanent (never retried): invalid options (2), diverged (3), any other error.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Protocol

from autolabel.celldir import RUNNER_LOG, read_metrics
from autolabel.errors import EXIT_BAD_INPUT, EXIT_BUSY, EXIT_DIVERGED, EXIT_HANGUP, EXIT_INTERRUPTED, EXIT_OK
from autolabel.process import die_with_parent  # SIGTERM to the trainer when the thread that launched it dies

from flows.cells import Cell, cell_dir

Outcome = Literal["ok", "transient", "permanent"]
Log = Callable[[str], None]


class TransientError(RuntimeError):
    """The attempt died for reasons outside the cell; a retry resumes from its checkpoint."""


class PermanentError(RuntimeError):
    """The cell itself is at fault (bad options, divergence); a retry would fail the same way."""


@dataclass
class Attempt:
    """What one launch of a pack did, as the ledger and the retry logic need it."""

    cells: list[str]
    outcome: Outcome
    detail: str = ""
    exit_code: int | None = None
    device_seconds: float = 0.0  # billable accelerator time (0 on a CPU-only machine)
    usd: float = 0.0
    extra: dict = field(default_factory=dict)


class Runner(Protocol):
    """Train a pack of cells to the end (or failure) and say what happened."""

    def run(self, cells: list[Cell], log: Log, force: bool = False) -> Attempt: ...

    def stop(self) -> None:
        """Ask every running pack to stop (each checkpoints the epoch in progress); returns at once."""
        ...


def classify_exit(code: int | None) -> tuple[Outcome, str]:
    """Map a trainer's exit status (negative: killed by that signal) to an outcome."""
    if code is None:
        return "transient", "no exit code: the infrastructure ended the task"
    if code == EXIT_OK:
        return "ok", "complete"
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        return "transient", f"killed by {name}"
    if code == 137:
        return "transient", "exit 137: killed (SIGKILL, often out of memory)"
    if code == 143:
        return "transient", "exit 143: terminated (SIGTERM)"
    if code in (EXIT_INTERRUPTED, EXIT_HANGUP):
        return "transient", f"exit {code}: stopped ({'Ctrl-C' if code == EXIT_INTERRUPTED else 'SIGHUP'})"
    if code == EXIT_BUSY:
        return "transient", "exit 75: busy (another trainer holds the cell's lock)"
    if code == EXIT_BAD_INPUT:
        return "permanent", "exit 2: invalid options or data"
    if code == EXIT_DIVERGED:
        return "permanent", "exit 3: training diverged"
    return "permanent", f"exit {code}: trainer error"


def detect_gpus() -> list[str]:
    """GPU indices this machine offers, without importing torch (which costs seconds)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


class LocalRunner:
    """Runs packs as subprocesses on this machine: one pack per GPU, or CPU cores shared."""

    def __init__(
        self,
        grid_dir: Path,
        max_parallel: int,
        usd_per_hour: float = 0.0,
        gpus: list[str] | None = None,
        trainer: list[str] | None = None,
    ):
        """``usd_per_hour``: what an hour of one pack's launch costs (flows.plan.make_pricing decides:
        a GPU's price, or what this machine costs); ``trainer``: the command that trains cells,
        their folders appended (default: this Python's ``-m autolabel.train``)."""
        self.grid_dir = Path(grid_dir)
        self.trainer = list(trainer) if trainer else [sys.executable, "-m", "autolabel.train"]
        self.gpus = detect_gpus() if gpus is None else gpus
        self.usd_per_hour = usd_per_hour
        self.max_parallel = max_parallel
        self._free_gpus: queue.Queue[str] = queue.Queue()
        for g in self.gpus:
            self._free_gpus.put(g)
        # Without GPUs, parallel cells split the cores rather than oversubscribing them.
        self.threads = max(1, (os.cpu_count() or 1) // max(1, max_parallel))
        self._running: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self.stopping = False

    def stop(self) -> None:
        """SIGTERM to every running trainer (each checkpoints the epoch in progress and exits 143);
        no trainer starts after this. Called again, it kills them (SIGKILL): a trainer ignores a
        repeated SIGTERM, which a dying parent's threads can deliver several times."""
        with self._lock:
            again, self.stopping = self.stopping, True
            for proc in self._running:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL if again else signal.SIGTERM)

    def _env(self, gpu: str | None) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        else:
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                env[var] = str(self.threads)
        return env

    def run(self, cells: list[Cell], log: Log, force: bool = False) -> Attempt:
        dirs = [cell_dir(self.grid_dir, c) for c in cells]
        gpu = self._free_gpus.get() if self.gpus else None
        start = time.monotonic()
        try:
            code = self._spawn(dirs, self._env(gpu), log, force)
        finally:
            if gpu is not None:
                self._free_gpus.put(gpu)
        seconds = time.monotonic() - start
        outcome, detail = classify_exit(code)
        return Attempt(
            cells=[c.id for c in cells],
            outcome=outcome,
            detail=detail,
            exit_code=code,
            device_seconds=seconds if gpu is not None else 0.0,
            usd=seconds / 3600 * self.usd_per_hour,
            extra={"wall_seconds": round(seconds, 3), "gpu": gpu},
        )

    def _spawn(self, dirs: list[Path], env: dict[str, str], log: Log, force: bool) -> int:
        """Run the trainer, teeing its output to each cell's runner.log and to ``log``."""
        cmd = [*self.trainer, *map(str, dirs), *(["--force"] if force else [])]
        logs = [open(d / RUNNER_LOG, "a") for d in dirs]
        try:
            for f in logs:
                f.write(f"$ {' '.join(cmd)}\n")
                f.flush()
            with self._lock:  # a stop between the check and the start would miss this trainer
                if self.stopping:
                    return -signal.SIGTERM  # never started: the cell waits for the rerun
                proc = subprocess.Popen(
                    cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                    bufsize=1, preexec_fn=die_with_parent if sys.platform == "linux" else None,
                )
                self._running.add(proc)
            assert proc.stdout is not None
            try:
                for line in proc.stdout:
                    for f in logs:
                        f.write(line)
                        f.flush()
                    log(line.rstrip())
                return proc.wait()
            finally:
                with self._lock:
                    self._running.discard(proc)
        finally:
            for f in logs:
                f.close()


def pack_outcomes(grid_dir: Path, cells: list[Cell], otherwise: str) -> dict[str, str]:
    """Each cell's status after an attempt: its metrics.json if written, else ``otherwise``."""
    out = {}
    for c in cells:
        m = read_metrics(cell_dir(grid_dir, c))
        if isinstance(m, str):  # unreadable: the message says which file and what to do
            out[c.id] = f"failed: {m}"
        elif m is not None:
            out[c.id] = m.status if m.status == "complete" else f"{m.status}: {m.message}".rstrip(": ")
        else:
            out[c.id] = otherwise
    return out

