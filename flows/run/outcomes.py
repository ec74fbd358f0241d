"""What a runner says about a pack: the Runner protocol, one Attempt per launch, one CellOutcome per cell.

    attempt = runner.run(pack, log)            # Attempt: ok / transient / permanent, and per cell:
    attempt.outcomes["<cell id>"]              # CellOutcome(status="complete"|"failed"|..., reason, exit_code)

Both backends (flows/run/local.py, flows/ecs/runner.py) run the image's own entry point,
``python -m autolabel.train CELL_DIR ...``, and classify what happened in one place
(:func:`classify_exit`), so that retries mean the same thing everywhere:

- transient (retried, resuming from the checkpoint): killed by a signal, out of memory
  (137), stopped (143, 130, 129), a full disk (74), busy (75: another trainer still holds the
  cell, e.g. one of a killed flow still checkpointing), or the infrastructure was lost;
- permanent (never retried): invalid options (2), diverged (3), any other error.

Statuses are fields, never parsed from messages: the flow, the summary and the exit code read
``CellOutcome.status``; ``reason`` is for people.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal, Protocol

from autolabel.celldir import read_metrics
from autolabel.errors import (
    EXIT_BAD_INPUT,
    EXIT_BUSY,
    EXIT_DIVERGED,
    EXIT_HANGUP,
    EXIT_INTERRUPTED,
    EXIT_NO_SPACE,
    EXIT_OK,
)
from flows.spec.cells import Cell, CellOutcome, cell_dir

if TYPE_CHECKING:
    from flows.cost.estimate import Pack
    from flows.run.ledger import Ledger

Outcome = Literal["ok", "transient", "permanent"]
Log = Callable[[str], None]


@dataclass
class Attempt:
    """What one launch of a pack did, as the ledger, the retry logic and the summary need it."""

    cells: list[str]
    outcome: Outcome
    detail: str = ""
    exit_code: int | None = None
    device_seconds: float = 0.0  # billable accelerator time (0 on a CPU-only machine)
    usd: float = 0.0
    extra: dict = field(default_factory=dict)
    outcomes: dict[str, CellOutcome] = field(default_factory=dict)  # per cell, from its files


class Runner(Protocol):
    """Train a pack of cells to the end (or failure) and say what happened."""

    grid_dir: Path  # the grid's local folder: cells/<id>/ holds each cell's files once a pack is done
    max_parallel: int  # packs it trains at once

    def run(self, pack: Pack, log: Log, force: bool = False) -> Attempt: ...

    def stop(self) -> None:
        """Ask every running pack to stop (each checkpoints the epoch in progress); returns at once."""
        ...

    def settle(self, ledger: Ledger) -> None:
        """Once every pack is done: charge what the run cost beyond its packs (ECS: the instances)."""
        ...


class PackError(RuntimeError):
    """A pack that did not complete, with every cell's outcome (picklable: Prefect may store it)."""

    def __init__(self, outcomes: dict[str, CellOutcome], message: str):
        super().__init__(outcomes, message)
        self.outcomes, self.message = outcomes, message

    def __str__(self) -> str:
        return self.message


class TransientError(PackError):
    """The attempt died for reasons outside the cell; a retry resumes from its checkpoint."""


class PermanentError(PackError):
    """The cell itself is at fault (bad options, divergence), or the cap refused a retry."""


class StoppedError(PackError):
    """The flow was asked to stop: the pack checkpointed and stopped; a rerun resumes it (never retried)."""


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
    if code == EXIT_NO_SPACE:
        return "transient", "exit 74: a disk is full (free space; the cell resumes from its checkpoint)"
    if code == EXIT_BAD_INPUT:
        return "permanent", "exit 2: invalid options or data"
    if code == EXIT_DIVERGED:
        return "permanent", "exit 3: training diverged"
    return "permanent", f"exit {code}: trainer error"


def cell_outcomes(grid_dir: Path, cells: tuple[Cell, ...] | list[Cell], otherwise: CellOutcome) -> dict[str, CellOutcome]:
    """Each cell's outcome after an attempt: its metrics.json if written, else ``otherwise``."""
    out = {}
    for c in cells:
        m = read_metrics(cell_dir(grid_dir, c))
        if isinstance(m, str):  # unreadable: the message says which file and what to do
            out[c.id] = CellOutcome("failed", m, otherwise.exit_code)
        elif m is not None:
            out[c.id] = CellOutcome(m.status, "" if m.status == "complete" else m.message, otherwise.exit_code)
        else:
            out[c.id] = otherwise
    return out


def finish_attempt(grid_dir: Path, cells: tuple[Cell, ...] | list[Cell], attempt: Attempt) -> Attempt:
    """The attempt with each cell's outcome read from its files; a cell without metrics.json failed
    the way the attempt did (the flow turns that into "stopped" when it asked for the stop), unless
    the attempt succeeded: the trainer exits 0 without metrics.json only when ``--until-round``
    paused the cell at a halving cut."""
    if attempt.outcome == "ok":
        otherwise = CellOutcome("paused", "paused at a halving cut; its stratum decides", attempt.exit_code)
    else:
        otherwise = CellOutcome("failed", attempt.detail, attempt.exit_code)
    attempt.outcomes = cell_outcomes(grid_dir, cells, otherwise)
    return attempt
