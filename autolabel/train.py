"""Train grid cells from their directories: the entry point of the training image.

    python -m autolabel.train CELL_DIR [CELL_DIR ...] [--force] [--device cpu|cuda|mps|auto]
                              [--threads K] [--workers N] [--eager] [--fused] [--until-round N]

A cell directory (local folder or ``s3://bucket/prefix``) holds ``options.json``
(:class:`autolabel.options.CellOptions`) and ``plan.json`` (:class:`autolabel.options.Plan`).
Training writes into it: ``history.csv`` and ``training.log`` after every epoch,
``checkpoint.pt`` after an epoch once ``--checkpoint-every`` seconds (default 60; 0: every
epoch; or $AUTOLABEL_CHECKPOINT_EVERY_S) have passed and whenever SIGTERM stops training,
then ``model.pt`` and, last and atomically, ``metrics.json``.
A cell whose metrics.json says ``complete`` is skipped unless ``--force``; any
other cell resumes from its checkpoint exactly (same epoch, optimizer, scheduler, RNG).
``--until-round N`` stops each cell cleanly once N rounds (repeats counted) are trained: its
checkpoint is saved there, no metrics.json is written, and the exit code is 0; a later run
without it trains on from there (a halving cut, flows/run/halving.py).

A tiny CPU run (a few seconds after the synthetic cohort is generated once into $AUTOLABEL_CACHE):

    mkdir -p /tmp/cell
    echo '{"device": "cpu", "dataset": {"kind": "synthetic", "subjects": 12, "rows": 32, "cols": 64}}' > /tmp/cell/options.json
    echo '[{"lr": 0.003, "bce_weight": 0.75, "num_epochs": 2}, {"lr": 0.002, "bce_weight": 0.375, "num_epochs": 2}]' > /tmp/cell/plan.json
    python -m autolabel.train /tmp/cell && cat /tmp/cell/metrics.json

A remote cell (any S3-compatible endpoint; credentials from boto3's default chain):

    AWS_ENDPOINT_URL=http://localhost:5000 python -m autolabel.train s3://bucket/grid/cell-0001

Exit codes: 0 every cell complete (or skipped as complete); 1 an unexpected error in
some cell (traceback printed; the flow does not retry it, a rerun skips complete cells); 2 bad input (options, plan,
dataset: fix it); 3 a cell diverged (NaN/inf loss); 75 a cell is busy (another trainer
holds its folder's lock; the cell is left untouched); 143, 130, 129 stopped by SIGTERM,
Ctrl-C (SIGINT) or SIGHUP after checkpointing the epoch in progress (a rerun resumes). Once
stopping, a signal of another kind is ignored (a terminal's Ctrl-C arrives directly and again
from the flow as SIGTERM); the same signal a second time kills at once.
With several cells the worst wins, in the order 130, 143, 129, 75, 1, 2, 3; every cell is
attempted regardless of the others (unless stopped).

Several cells train side by side. On CUDA, by default, all of them in this process, 16 at
a time, each in a thread with its own CUDA stream, its steps replayed from CUDA graphs
(autolabel/step.py, autolabel/pack.py): on one H200 this ran 16 mixed cells at 1450
images/s against 684 for 16 eager processes. ``--threads K`` sets the cells per process,
``--workers N`` the processes (``--workers N`` alone: one cell per process), ``--eager``
turns the graphs off. Elsewhere the default is one cell after another. A worker process
killed by a signal makes the pack exit 128+signal, so a retry resumes it.

``--fused`` trains cells of one shape (base model, data, batch sizes, epochs, repeats) as one
model vmapped over the cells, in this process, one such pack after another (autolabel/fusing.py,
autolabel/fused.py); each cell keeps its own seed, data order, lr, gamma, BCE weight, files and
exit code. The cells that fuse with no other then go the usual way (``--threads``, ``--workers``).

This module is the command line only: it makes the run's :class:`autolabel.control.RunControl`
from the flags, sets it from SIGTERM, SIGINT or SIGHUP, and hands the cells to autolabel.cell (one cell, the
method) or autolabel.pack (several at once). ``python -m autolabel`` is the same command.
Torch is imported only where a cell trains in this process: a bad flag is refused, and a pack's
supervisor of worker processes runs, without it (0.06 s and 15 MB at most, against 3.7 s and
830 MB with torch and the model code loaded; 2-core CPU machine, 2026-12-05).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any, Callable

from autolabel import pack
from autolabel.control import (
    CHECKPOINT_ENV,
    DEFAULT_CHECKPOINT_EVERY_S,
    RunControl,
    parse_seconds,
)
from autolabel.errors import SIGNAL_NAMES, STOP_SIGNALS, BadInput, worst


def train_cells(
    cells: list[str], control: RunControl, force: bool = False, device: str | None = None,
    workers: int | None = None, threads: int | None = None, fused: bool = False,
) -> int:  # fmt: skip
    """Train cells, each independent of the others' outcome; the worst exit code.

    ``fused``: cells of one shape first, each group as one vmapped model (autolabel.fusing);
    the rest as follows. ``threads`` > 1 trains that many cells at once in one process, a
    thread (and CUDA stream) each; ``workers`` > 1 runs that many such processes at once
    (autolabel.pack); otherwise one after another in this process (defaults:
    autolabel.pack.layout). With several cells every line of progress starts with the cell's
    name (errors on stderr name the cell's folder).
    """
    if fused:  # torch is imported where a cell trains in this process
        from autolabel import fusing

        packs, rest = fusing.form_packs(cells, force, device)
        codes = fusing.train_packs(packs, control, force, device, lambda uri: say_for(uri, len(cells)))
        if rest and not control.stop_requested:
            codes.append(train_cells(rest, control, force, device, workers, threads))
        return worst(codes + ([control.stop_code] if control.stop_requested else []))
    workers, threads = pack.layout(len(cells), device, workers, threads)
    if workers > 1:
        return pack.train_packed(cells, control, workers, force, device, threads)
    if threads > 1:
        return pack.train_threaded(cells, control, threads, force, device)
    from autolabel.cell import run_cell

    codes = []
    for uri in cells:
        if control.stop_requested:
            break  # the cells not started yet wait for the rerun
        codes.append(run_cell(uri, control, force, device, say=say_for(uri, len(cells))))
    return worst(codes + ([control.stop_code] if control.stop_requested else []))


def say_for(uri: str, cells: int) -> Callable[[str], None]:
    """Where a cell's progress lines go: stdout, with the cell's name in front when there are several."""
    prefix = f"[{pack.cell_label(uri)}] " if cells > 1 else ""
    return lambda line: print(prefix + line, flush=True)


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, RunControl]:
    """The flags, and the run's control object made from them; a bad flag exits 2 with one line."""
    parser = argparse.ArgumentParser(prog="python -m autolabel.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("cells", nargs="+", metavar="CELL_DIR", help="cell folder or s3://bucket/prefix")
    parser.add_argument("--force", action="store_true", help="retrain complete cells, ignoring checkpoints")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="override options.json device")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="worker processes at once (default: as many as the cells need on CUDA, up to 16; 1 on CPU)")
    parser.add_argument("--threads", type=int, metavar="K",
                        help="cells trained at once in each process, a thread and CUDA stream each "
                             "(default: see autolabel/pack.py; 1 on CPU)")
    parser.add_argument("--eager", action="store_true", help="no CUDA graphs: every step launched from Python")
    parser.add_argument("--fused", action="store_true",
                        help="train cells of one shape as one model vmapped over the cells (see autolabel/fusing.py)")
    parser.add_argument("--checkpoint-every", metavar="SECONDS",
                        help=f"seconds between checkpoints, 0 for every epoch (default ${CHECKPOINT_ENV} or "
                             f"{DEFAULT_CHECKPOINT_EVERY_S:g}); SIGTERM always checkpoints")  # fmt: skip
    parser.add_argument("--until-round", type=int, metavar="N",
                        help="stop each cell once N rounds (repeats counted) are trained: checkpoint saved, no "
                             "metrics.json, exit 0; a run without it trains on")
    args = parser.parse_args(argv)
    control = RunControl(graphs=not args.eager, until_round=args.until_round)
    try:
        if args.checkpoint_every is not None:
            control.checkpoint_every_s = parse_seconds(args.checkpoint_every, "--checkpoint-every")
        control.checkpoint_interval()  # a bad $AUTOLABEL_CHECKPOINT_EVERY_S fails here, before any cell
    except BadInput as e:
        parser.error(str(e))
    for name in ("workers", "threads", "until_round"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: must be at least 1, got {getattr(args, name)}")
    if args.fused and args.until_round is not None:  # a fused pack trains its cells to the end, in lockstep
        parser.error("--fused and --until-round: give one (a halving stretch trains its cells as cells)")
    return args, control


def main(argv: list[str] | None = None) -> int:
    args, control = parse_args(argv)
    run = (args.cells, control, args.force, args.device, args.workers, args.threads, args.fused)
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        return train_cells(*run)
    previous = {s: signal.signal(s, stop_handler(control)) for s in STOP_SIGNALS}
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = PipeGuard(sys.stdout), PipeGuard(sys.stderr)
    try:
        with control.quiet():
            return train_cells(*run)
    finally:
        sys.stdout, sys.stderr = streams
        for s, handler in previous.items():
            signal.signal(s, handler)


def stop_handler(control: RunControl) -> Callable[[int, Any], None]:
    """The handler of SIGINT, SIGTERM and SIGHUP: the first stops after the epoch in progress is
    checkpointed (exit 128 + its number). A terminal's Ctrl-C reaches the trainer directly and
    through the flow (as SIGTERM), so a later signal of another kind is ignored. A second Ctrl-C
    kills at once (a user who will not wait); a repeated SIGTERM or SIGHUP does not: when a
    multi-threaded parent dies, PR_SET_PDEATHSIG fires as each of its threads exits in turn
    (seen: the epoch in progress lost). Whoever must kill sends SIGKILL (flows/run/local.py)."""

    def stop(signum: int, frame: Any) -> None:
        if control.stop_requested:
            return  # already stopping: another delivery of the same stop
        control.request_stop(SIGNAL_NAMES[signal.Signals(signum)], 128 + signum)
        if signum == signal.SIGINT:
            signal.signal(signum, signal.SIG_DFL)
    return stop


class PipeGuard:
    """stdout or stderr that outlives its reader.

    When the flow that reads the trainer's pipes dies (SIGKILL), the trainer gets SIGTERM
    (PR_SET_PDEATHSIG) and must still finish and checkpoint its epoch; its next print would
    raise BrokenPipeError first. On that error both streams are pointed at /dev/null, since
    nobody reads them any more, and training goes on. (The parent's pid cannot tell: a child
    of a thread is first handed to a sibling thread of the same dying process.)
    """

    def __init__(self, stream: Any):
        self.stream = stream

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            silence_output()
            return len(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            silence_output()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def silence_output() -> None:
    """Point file descriptors 1 and 2 at /dev/null (the reader of their pipe is gone)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


if __name__ == "__main__":
    raise SystemExit(main())
