"""What can go wrong in a cell, and the exit codes that say so.

The trainer (``python -m autolabel.train``) and the runners that start it (flows/run/local.py,
flows/ecs/runner.py) read the same codes from here, so a retry means the same thing everywhere:

- 0 every cell complete (or skipped as complete);
- 1 an unexpected error (a bug or the infrastructure; the traceback is printed; not retried);
- 2 bad input: options, plan or dataset (permanent: fix it);
- 3 a loss became NaN or infinite (permanent: lower the lr);
- 74 a disk is full (transient: free space, then a rerun resumes from the checkpoint);
- 75 the cell is busy: another trainer holds its lock (transient: retry once that one is done);
- 129 stopped by SIGHUP, 130 by Ctrl-C (SIGINT), 143 by SIGTERM, each after checkpointing the
  epoch in progress (transient: a rerun resumes).
"""

from __future__ import annotations

import errno
import signal

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_NO_SPACE = 74  # BSD sysexits' EX_IOERR: a disk is full; nothing done is lost, free space and rerun
EXIT_BUSY = 75  # BSD sysexits' EX_TEMPFAIL: try again later
EXIT_HANGUP = 128 + signal.SIGHUP  # 129, the terminal went away
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130, what a shell reports for Ctrl-C
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143, what a kill by SIGTERM reports


class BadInput(Exception):
    """Options, plan or dataset that cannot train; the message names the file and field."""


class Diverged(Exception):
    """A NaN or infinite loss: the cell ends with status diverged."""


class Stopped(Exception):
    """A stop was asked for: the epoch in progress was finished and checkpointed, then training stopped."""


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # each stops a run after a checkpoint
SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}


def no_space(e: BaseException) -> str | None:
    """``disk full at PATH`` when ``e`` is a full disk (or quota), else None: an environment fault,
    not bad input, so whoever meets it says so and exits EXIT_NO_SPACE."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full at {e.filename or 'a file being written'}"
    return None


def worst(codes: list[int]) -> int:
    """The exit code of a multi-cell run: stopped (130, 143, 129) first, then 74 (a full disk), 75
    (busy: a retry helps), 1 (an error), 2 (fix input), 3."""
    for code in (EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_HANGUP, EXIT_NO_SPACE, EXIT_BUSY, EXIT_ERROR, EXIT_BAD_INPUT,
                 EXIT_DIVERGED):
        if code in codes:
            return code
    return EXIT_OK
