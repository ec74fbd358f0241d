"""The run-control object: what one trainer run decides at its start and what a signal changes.

``python -m autolabel.train`` makes one :class:`RunControl` from its flags and passes it down to
every cell it trains (one after another, in threads, or as flags to worker processes); its
signal handlers set the stop request on it. Nothing here is module state: two runs in one
process (the tests, the benchmark) each have their own.
"""

from __future__ import annotations

import math
import os
import re
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from autolabel.errors import EXIT_TERMINATED, BadInput
from autolabel.gate import Gate

# Seconds between checkpoints, 0 for after every epoch: --checkpoint-every, else the variable
# below, else the default. A graphed GPU epoch takes about a second and a checkpoint holds
# 200-450 MB (weights, Adam moments, best weights), so one per epoch would cost more than the
# training; SIGTERM (ECS stop, spot notice) always checkpoints the epoch in progress first.
CHECKPOINT_ENV = "AUTOLABEL_CHECKPOINT_EVERY_S"
DEFAULT_CHECKPOINT_EVERY_S = 60.0
# Warnings a run silences: a CUDA cell's Adam is built capturable (its lr and step live on the
# device, for the CUDA graph) and also runs eagerly for the warm-up steps, which is intended;
# a fused pack's cell keeps its own torch Adam for its lr schedule and checkpoint while the
# pack's Adam steps (autolabel/fused.py), so its StepLR never sees that Adam step.
QUIET_WARNINGS = (
    "This instance was constructed with capturable=True",
    "Detected call of `lr_scheduler.step()` before `optimizer.step()`",
)


def parse_seconds(raw: str, shown: str) -> float:
    """A non-negative finite number of seconds, or BadInput naming where it came from."""
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value < 0:
        raise BadInput(f"{shown}: expected seconds >= 0, got {raw!r}")
    return value


@dataclass
class RunControl:
    """Run-time switches of one trainer run, passed down to each cell it trains."""

    # Set by the SIGTERM handler (autolabel.train) or Ctrl-C in a threaded pack; read between
    # epochs. ECS sends SIGTERM, then SIGKILL 30 s later (a spot notice gives 2 minutes):
    # time enough to finish a GPU epoch of one cell.
    stop_requested: bool = False
    stop_reason: str = "SIGTERM"  # what asked: named in the message of a stopped cell
    stop_code: int = EXIT_TERMINATED  # the exit code of a stopped cell: 128 + the signal that asked
    # CUDA graphs for the training step on CUDA (autolabel/step.py); --eager turns them off.
    graphs: bool = True
    # --checkpoint-every; None: $AUTOLABEL_CHECKPOINT_EVERY_S, else the default (see checkpoint_interval).
    checkpoint_every_s: float | None = None
    # --until-round N: stop a cell cleanly once N rounds (repeats counted) are trained, checkpointed
    # there, without metrics.json (exit 0); a run without it trains on. A halving cut (flows/run/halving.py).
    until_round: int | None = None
    # Cells trained in threads of one process (autolabel.pack.train_threaded) share their
    # tensors when they read the same data, keyed by what decides them; None: no sharing.
    shared_data: dict[str, Any] | None = None
    data_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # Model initialisation seeds the process-wide RNG: cells in threads take turns.
    init_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # Cells in threads record their CUDA graphs one at a time, alone (autolabel/gate.py).
    gate: Gate = field(default_factory=Gate, repr=False)

    def request_stop(self, reason: str, code: int = EXIT_TERMINATED) -> None:
        """Stop every cell after the epoch in progress is checkpointed, and start no more."""
        self.stop_requested, self.stop_reason, self.stop_code = True, reason, code

    def pauses_at(self, rounds_trained: int) -> bool:
        """Whether a cell that has trained this many rounds (repeats counted) stops here (--until-round)."""
        return self.until_round is not None and rounds_trained >= self.until_round

    @contextmanager
    def quiet(self) -> Iterator[None]:
        """The run's warning filters (QUIET_WARNINGS), for the whole run: its entry point enters this
        once, in the main thread, around every cell (Python's filters are process-wide)."""
        with warnings.catch_warnings():
            for message in QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=re.escape(message))
            yield

    def checkpoint_interval(self) -> float:
        """Seconds between checkpoints for this run; a bad environment value is BadInput."""
        if self.checkpoint_every_s is not None:
            return self.checkpoint_every_s
        raw = os.environ.get(CHECKPOINT_ENV, "")
        return parse_seconds(raw, f"${CHECKPOINT_ENV}") if raw else DEFAULT_CHECKPOINT_EVERY_S
