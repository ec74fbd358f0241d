"""The local runner: packs of cells as subprocesses on this machine's cores or GPUs.

    runner = LocalRunner(grid_dir, pricing)                 # flows.cost.cap.make_pricing
    attempt = runner.run(pack, print)                       # flows.run.outcomes.Attempt

It runs the image's own entry point, ``python -m autolabel.train CELL_DIR ...`` (or any trainer
command given, e.g. the tests' stand-in), one pack per GPU, or the CPU cores shared between
``max_parallel`` packs; what happened is classified by flows.run.outcomes.classify_exit.
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
from pathlib import Path

from autolabel.celldir import RUNNER_LOG
from autolabel.process import (
    die_with_parent,  # SIGTERM to the trainer when the thread that launched it dies
)
from flows.cost.estimate import Pack, Pricing
from flows.run.ledger import Ledger
from flows.run.outcomes import Attempt, Log, classify_exit, finish_attempt
from flows.spec.cells import cell_dir


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

    def __init__(self, grid_dir: Path, pricing: Pricing, gpus: list[str] | None = None,
                 trainer: list[str] | None = None):
        """``pricing``: the run's (flows.cost.cap.make_pricing): packs at once, and what an hour of
        one pack's launch costs (a GPU's price, or what this machine costs); ``trainer``: the
        command that trains cells, their folders appended (default: this Python's ``-m autolabel.train``)."""
        self.grid_dir = Path(grid_dir)
        self.trainer = list(trainer) if trainer else [sys.executable, "-m", "autolabel.train"]
        self.gpus = detect_gpus() if gpus is None else gpus
        self.usd_per_hour = pricing.usd_per_gpu_hour
        self.max_parallel = max_parallel = pricing.max_parallel
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

    def run(self, pack: Pack, log: Log, force: bool = False) -> Attempt:
        dirs = [cell_dir(self.grid_dir, c) for c in pack.cells]
        gpu = self._free_gpus.get() if self.gpus else None
        start = time.monotonic()
        try:
            flags = ["--force"] if force else []
            flags += ["--until-round", str(pack.until_round)] if pack.until_round is not None else []
            code = self._spawn(dirs, self._env(gpu), log, flags)
        finally:
            if gpu is not None:
                self._free_gpus.put(gpu)
        seconds = time.monotonic() - start
        outcome, detail = classify_exit(code)
        attempt = Attempt(
            cells=pack.ids,
            outcome=outcome,
            detail=detail,
            exit_code=code,
            device_seconds=seconds if gpu is not None else 0.0,
            usd=seconds / 3600 * self.usd_per_hour,
            extra={"wall_seconds": round(seconds, 3), "gpu": gpu},
        )
        return finish_attempt(self.grid_dir, pack.cells, attempt)

    def settle(self, ledger: Ledger) -> None:
        """Nothing beyond the packs: this machine was running anyway (its hours are in each attempt)."""

    def _spawn(self, dirs: list[Path], env: dict[str, str], log: Log, flags: list[str]) -> int:
        """Run the trainer on ``dirs`` with ``flags``, teeing its output to each cell's runner.log and to ``log``."""
        cmd = [*self.trainer, *map(str, dirs), *flags]
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
