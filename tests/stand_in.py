"""``python -m tests.stand_in CELL_DIR [CELL_DIR ...] [--force] [--until-round N]``: the stand-in
trainer (tests/stand_in_trainer.py) as a command.

It sets its stop handlers before it imports the stand-in, as the trainer sets its own before it
imports torch: a Ctrl-C to the terminal's job that arrives while the command is still loading
ends it as a stop (exit 128 + the signal, no cell started), never with a traceback.
"""

from __future__ import annotations

import signal
import sys

if __name__ == "__main__":
    early: list[int] = []

    def hold(signum: int, _frame) -> None:
        """The stand-in's own stop (stand_in_trainer.stop), until that is loaded."""
        if not early:
            early.append(signum)
            signal.signal(signum, signal.SIG_DFL)

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, hold)
    from tests.stand_in_trainer import main

    sys.exit(main(sys.argv[1:], early))
