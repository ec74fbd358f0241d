"""Several cells at once on one device: threads in one process, worker processes, or both.

    python -m autolabel.train CELL_DIR ...                          # CUDA default: one process, 16 threads
    python -m autolabel.train CELL_A CELL_B CELL_C --workers 3      # one process per cell
    python -m autolabel.train CELL_DIR ... --workers 2 --threads 8  # two processes of 8 threads

Why: one eager cell of the published grid (U-Net, 128x256, batch 2-6) is bound by kernel
launches (~13 ms a step on an H200 whatever the batch), so the GPU is mostly idle. On
CUDA each cell's step is replayed from a CUDA graph (autolabel/step.py), and cells in
threads of one process run on their own CUDA streams, so their kernels share the GPU at
once; processes only take turns on it. Measured on one H200 with 16 mixed cells
(benchmarks/gpu_throughput.py; README "Packing"): 1450 images/s in threads, 807 in 16
processes with graphs, 684 in 16 eager processes, 217-254 one eager cell at a time.

Every cell keeps the meaning of a solo run (its plan, schedules, data order, metrics,
checkpoints, resume); a divergence, bad input or Python error in one cell leaves the
others running. A CUDA fault or an out-of-memory kill ends the process it happens in, so
every cell of it: the exit code (1 or 137) says so, and a rerun skips complete cells.

Threads (:func:`train_threaded`): cells reading the same data share its tensors; a cell
that records its CUDA graph does so alone (the run's gate, autolabel/gate.py); SIGTERM or Ctrl-C stops
each running cell after checkpointing the epoch in progress, and starts no more (exit 143,
or 130).

Worker management:
- at most ``workers`` at once; the next cell starts when one finishes;
- every output line is streamed with the cell's name in front (stdout to stdout, stderr to stderr);
- SIGTERM, SIGINT or SIGHUP to this process stops the running workers (SIGTERM: each
  checkpoints the epoch in progress and stops), no new worker starts, and the run exits 143
  (130, 129) once they are gone; the same signal again kills them (SIGKILL);
- a worker gets SIGTERM when this process dies, even by SIGKILL (Linux PR_SET_PDEATHSIG), so it
  checkpoints and exits; its cell's lock keeps a rerun from racing it (autolabel.cell.run_cell);
- on CPU each worker gets an equal share of the threads (OMP_NUM_THREADS).

Exit code: a worker killed by a signal makes the pack exit 128+signal (transient: a retry
resumes from the checkpoints and skips complete cells); otherwise the trainer's rule
(:func:`autolabel.errors.worst`: 1 before 2 before 3).

Every entry point takes the run's :class:`autolabel.control.RunControl`: its stop request
stops the cells, its graphs and checkpoint interval travel to worker processes as flags.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import IO

from autolabel.control import RunControl
from autolabel.errors import STOP_SIGNALS, worst
from autolabel.process import die_with_parent

# Eager processes at batch 4 on one H200 (PyTorch 2.11, 2026-11-27) reached ~1045 images/s
# with 4, ~1060 with 8 and ~1530 with 16 at once: 16 was the best measured; more only add
# memory (each process holds its own CUDA context and dataset copy).
MAX_CUDA_WORKERS = 16
# Cells trained at once in one process on CUDA, a thread and stream each. On one H200
# (benchmarks/throughput/H200-2026-11-27*.log) 16 mixed cells reached 1450 images/s this
# way, against 684 as 16 eager processes, 807 as 16 processes with CUDA graphs and 1207 as
# 4 processes of 4 threads; 8 cells in threads reached 1421.
CUDA_THREADS = 16
POLL_S = 0.1  # how often the parent looks for finished workers


def on_cuda(device: str | None) -> bool:
    """Whether the cells will train on CUDA: asked for, or available under auto."""
    import torch

    return device == "cuda" or (device in (None, "auto") and torch.cuda.is_available())


def default_workers(cells: int, device: str | None) -> int:
    """Worker processes when only --threads is given: min(cells, 16) on CUDA; 1 elsewhere.

    With neither option, CUDA runs every cell in one process (default_threads): measured
    faster than processes (README, "Packing").
    """
    return min(cells, MAX_CUDA_WORKERS) if on_cuda(device) else 1


def default_threads(cells: int, device: str | None) -> int:
    """Cells per process on CUDA (threads on streams, each replaying CUDA graphs); 1 elsewhere."""
    return min(cells, CUDA_THREADS) if on_cuda(device) else 1


def layout(cells: int, device: str | None, workers: int | None, threads: int | None) -> tuple[int, int]:
    """(processes, cells per process) for ``cells`` cells and the --workers/--threads given (or None).

    Neither: on CUDA one process training min(cells, 16) at a time in threads, elsewhere one
    cell after another. --workers alone: one cell per process, as many processes. --threads
    alone: processes of that many threads, min(groups, 16) of them on CUDA.
    """
    chose_threads = threads is not None
    if threads is None:
        threads = 1 if workers else default_threads(cells, device)
    threads = max(1, min(cells, threads))
    groups = -(-cells // threads)
    if workers is None:
        workers = default_workers(groups, device) if chose_threads or threads == 1 else 1
    return min(groups, workers), threads


def cell_label(uri: str) -> str:
    """The name a cell's lines start with: the last part of its folder or URI."""
    return uri.rstrip("/").rsplit("/", 1)[-1]


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

    def start(self, uris: list[str], args: list[str], env: dict[str, str]) -> None:
        """One worker for ``uris``; several cells in one worker train in its threads."""
        cmd = [sys.executable, "-m", "autolabel.train", *uris, *args]
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )  # fmt: skip
        self.running[" ".join(uris)] = proc
        # A worker with several cells names them itself on every line.
        prefix = f"[{cell_label(uris[0])}] " if len(uris) == 1 else ""
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
        """Signal handler: stop every running worker (SIGTERM) and start no more.

        Workers share this process group, so a terminal's Ctrl-C reaches them directly too;
        forwarding SIGTERM rather than the same signal keeps that double delivery a single stop
        (autolabel.train.stop_handler). The same signal again is forwarded as SIGKILL."""
        again = self.stop_signal == signum
        self.stop_signal = self.stop_signal or signum
        for proc in self.running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL if again else signal.SIGTERM)


def exit_code(code: int) -> int:
    """A worker's status as a shell would report it: killed by signal N -> 128+N."""
    return 128 - code if code < 0 else code


def pack_exit(codes: list[int]) -> int:
    """Killed workers first (a retry helps and skips the complete cells), then errors.worst."""
    killed = [c for c in codes if c > 128]
    return killed[0] if killed else worst(codes)


def worker_args(control: RunControl, force: bool, device: str | None, threads: int) -> list[str]:
    """The flags of a worker process: this run's choices, one process of ``threads`` cells."""
    args = (["--force"] if force else []) + (["--device", device] if device else [])
    args += ["--workers", "1", "--threads", str(threads)] + ([] if control.graphs else ["--eager"])
    if control.checkpoint_every_s is not None:
        args += ["--checkpoint-every", str(control.checkpoint_every_s)]
    if control.until_round is not None:
        args += ["--until-round", str(control.until_round)]
    return args


def train_packed(
    cells: list[str], control: RunControl, workers: int, force: bool = False, device: str | None = None,
    threads: int = 1,
) -> int:  # fmt: skip
    """Train ``cells`` in worker processes, ``workers`` at a time, ``threads`` cells each; the exit code."""
    args = worker_args(control, force, device, threads)
    env = worker_env(workers)
    pack = Pack()
    unique = list(dict.fromkeys(cells))  # a cell named twice must not train twice at once
    pending = [unique[i : i + threads] for i in range(0, len(unique), threads)]
    codes: list[int] = []
    main = threading.current_thread() is threading.main_thread()  # where signal handlers can be set
    previous = {s: signal.signal(s, pack.forward) for s in STOP_SIGNALS} if main else {}
    if control.stop_requested:  # a stop came while this process was starting: start nothing
        pack.stop_signal = control.stop_code - 128
    try:
        while pending or pack.running:
            while pending and len(pack.running) < workers and pack.stop_signal is None:
                pack.start(pending.pop(0), args, env)
            time.sleep(POLL_S)
            for key, proc in list(pack.running.items()):
                if proc.poll() is not None:
                    codes.append(exit_code(proc.returncode))
                    del pack.running[key]
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


def train_threaded(
    cells: list[str], control: RunControl, threads: int, force: bool = False, device: str | None = None
) -> int:
    """Train ``cells`` in this process, ``threads`` at a time, each in a thread (and CUDA stream)
    of its own; the worst exit code, 143 if a cell was left unstarted, 130 after Ctrl-C.
    See the module's docstring for what the threads share and how they stop."""
    import torch  # deferred, as in on_cuda: only a process that trains needs it

    from autolabel.cell import run_cell

    lock = threading.Lock()
    cuda = torch.cuda.is_available() and device != "cpu"

    def run(uri: str) -> int | None:
        if control.stop_requested:
            return None  # not started: it waits for the rerun
        with control.gate.member():  # a graph capture in one cell waits until the others stand still
            return run_on_stream(uri)

    def run_on_stream(uri: str) -> int:
        def say(line: str) -> None:
            with lock:
                sys.stdout.write(f"[{cell_label(uri)}] {line}\n")
                sys.stdout.flush()

        if not cuda:
            return run_cell(uri, control, force, device, say)
        with torch.cuda.stream(torch.cuda.Stream()):
            code = run_cell(uri, control, force, device, say)
            torch.cuda.current_stream().synchronize()
            return code

    control.shared_data = {}
    try:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cell") as pool:
            futures = [pool.submit(run, uri) for uri in dict.fromkeys(cells)]
            waiting = set(futures)
            while waiting:  # in short waits, so that the stop handler (autolabel.train) runs in this thread
                try:
                    _, waiting = wait(waiting, timeout=POLL_S, return_when=FIRST_COMPLETED)
                except KeyboardInterrupt:  # Ctrl-C without autolabel.train's handler (called from code)
                    control.request_stop("Ctrl-C", 128 + signal.SIGINT)
                    if threading.current_thread() is threading.main_thread():
                        signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second Ctrl-C kills at once
    finally:
        control.shared_data = None
    codes = [f.result() for f in futures]
    unstarted = [control.stop_code] if None in codes else []
    return worst([c for c in codes if c is not None] + unstarted)
