"""Several cells at once on one device: one worker process per cell, each a solo run of the trainer.

    python -m autolabel.train CELL_A CELL_B CELL_C --workers 3      # three cells side by side
    python -m autolabel.train CELL_DIR ... --workers 16             # the default on CUDA: min(cells, 16)

Why processes: one eager cell of the published grid (U-Net, 128x256, batch 2-6) is bound by
kernel launches (~13 ms a step on an H200 whatever the batch), so the GPU is mostly idle.
Concurrent processes fill it: 16 reach ~1530 images/s against ~305 for one (REFERENCE.md,
"GPU measurements"). A worker is ``python -m autolabel.train ONE_CELL``, so each cell keeps
the meaning of a solo run (its plan, schedules, data order, metrics, checkpoints, resume),
and a crash, divergence or out-of-memory kill in one cell leaves the others running.

Worker management:
- at most ``workers`` at once; the next cell starts when one finishes;
- every output line is streamed with the cell's name in front (stdout to stdout, stderr to stderr);
- SIGTERM or SIGINT to this process is forwarded to the running workers (each keeps its last
  epoch's checkpoint), no new worker starts, and the run exits 143 (or 130) once they are gone;
- a worker gets SIGKILL when this process dies, even by SIGKILL (Linux PR_SET_PDEATHSIG),
  so a rerun never races an orphan writing into the same cell;
- on CPU each worker gets an equal share of the threads (OMP_NUM_THREADS).

Exit code: a worker killed by a signal makes the pack exit 128+signal (transient: a retry
resumes from the checkpoints and skips complete cells); otherwise the trainer's rule
(:func:`autolabel.train.worst`: 1 before 2 before 3).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from typing import IO

# 16 processes gave the best aggregate images/s measured on one H200 (REFERENCE.md); more
# only add memory (each process holds its own CUDA context and dataset copy).
MAX_CUDA_WORKERS = 16
POLL_S = 0.1  # how often the parent looks for finished workers


def default_workers(cells: int, device: str | None) -> int:
    """min(cells, 16) on CUDA; 1 elsewhere (a CPU cell already uses every core by itself)."""
    import torch

    cuda = device == "cuda" or (device in (None, "auto") and torch.cuda.is_available())
    return min(cells, MAX_CUDA_WORKERS) if cuda else 1


def cell_label(uri: str) -> str:
    """The name a cell's lines start with: the last part of its folder or URI."""
    return uri.rstrip("/").rsplit("/", 1)[-1]


def die_with_parent() -> None:
    """Runs in the worker before exec: SIGKILL when the parent dies (Linux only)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def worker_env(workers: int) -> dict[str, str]:
    """The worker's environment: unbuffered output, and on CPU its share of the threads."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    given = env.get("OMP_NUM_THREADS", "")
    threads = int(given) if given.isdigit() and int(given) > 0 else len(os.sched_getaffinity(0))
    share = str(max(1, threads // max(1, workers)))
    # Only CPU training reads these; more threads than cores makes OpenMP spin.
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = share
    return env


class Pack:
    """The running workers of one pack and the lock their output lines share."""

    def __init__(self) -> None:
        self.running: dict[str, subprocess.Popen] = {}
        self.readers: list[threading.Thread] = []
        self.lock = threading.Lock()
        self.stop_signal: int | None = None

    def start(self, uri: str, args: list[str], env: dict[str, str]) -> None:
        cmd = [sys.executable, "-m", "autolabel.train", uri, *args]
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )  # fmt: skip
        self.running[uri] = proc
        prefix = f"[{cell_label(uri)}] "
        for source, sink in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr)):
            t = threading.Thread(target=self.relay, args=(source, sink, prefix), daemon=True)
            t.start()
            self.readers.append(t)

    def relay(self, source: IO[str], sink: IO[str], prefix: str) -> None:
        """Copy a worker's lines as they come, each with the cell's name in front."""
        for line in source:
            with self.lock:
                sink.write(prefix + line if line.endswith("\n") else prefix + line + "\n")
                sink.flush()

    def forward(self, signum: int, _frame=None) -> None:
        """Signal handler: pass the signal on to every running worker and start no more."""
        self.stop_signal = signum
        for proc in self.running.values():
            if proc.poll() is None:
                proc.send_signal(signum)


def exit_code(code: int) -> int:
    """A worker's status as a shell would report it: killed by signal N -> 128+N."""
    return 128 - code if code < 0 else code


def pack_exit(codes: list[int]) -> int:
    """Killed workers first (a retry helps and skips the complete cells), then train.worst."""
    from autolabel.train import worst

    killed = [c for c in codes if c > 128]
    return killed[0] if killed else worst(codes)


def train_packed(cells: list[str], workers: int, force: bool = False, device: str | None = None) -> int:
    """Train ``cells`` in worker processes, ``workers`` at a time; the pack's exit code."""
    from autolabel import train

    args = (["--force"] if force else []) + (["--device", device] if device else [])
    env = worker_env(workers)
    pack = Pack()
    pending, codes = list(dict.fromkeys(cells)), []  # a cell named twice must not train twice at once
    main = threading.current_thread() is threading.main_thread()  # where signal handlers can be set
    previous = {s: signal.signal(s, pack.forward) for s in (signal.SIGTERM, signal.SIGINT)} if main else {}
    if train.stop_requested:  # SIGTERM came while this process was starting: start nothing
        pack.stop_signal = signal.SIGTERM
    try:
        while pending or pack.running:
            while pending and len(pack.running) < workers and pack.stop_signal is None:
                pack.start(pending.pop(0), args, env)
            time.sleep(POLL_S)
            for uri, proc in list(pack.running.items()):
                if proc.poll() is not None:
                    codes.append(exit_code(proc.returncode))
                    del pack.running[uri]
            if pack.stop_signal is not None and not pack.running:
                break
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    for t in pack.readers:
        t.join(timeout=5)
    if pack.stop_signal is not None:
        return 128 + pack.stop_signal
    return pack_exit(codes)
