"""A ``--force`` run's record of what it has retrained, so that its own resume instruction resumes.

    <grid>/forced.json    {"started": "2026-12-04T19:03:00+00:00", "retrained": ["<cell id>", ...]}

``--force`` retrains complete cells. A forced run that is stopped (SIGTERM, Ctrl-C, a full disk)
says "rerun the same command to resume", and that command has ``--force`` again: without a record
it would retrain the cells it had already retrained, and throw away the checkpoints of the ones it
had stopped. So before a forced pack launches, its cells go into the record; the plan of a later
forced run (flows.plan.prepare) skips the recorded cells that are complete, resumes the recorded
ones that are not (no --force: from their checkpoints) and forces only the rest. When a forced run
ends with every cell complete, the record goes. A run without --force leaves it as it is.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from autolabel.celldir import write_json_atomic

FORCED = "forced.json"


def read_forced(grid_dir: Path) -> tuple[str, frozenset[str]] | None:
    """(when it started, the cells it launched with --force) of a forced run not yet finished; None if none."""
    try:
        record = json.loads((Path(grid_dir) / FORCED).read_text())
        return str(record["started"]), frozenset(map(str, record["retrained"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{Path(grid_dir) / FORCED}: unreadable ({e}); delete it to retrain every cell "
                         "again under --force, or rerun without --force") from None


def note_forced(grid_dir: Path, ids: list[str]) -> None:
    """Add ``ids`` to the record (made now if there is none): they are launched with --force."""
    before = read_forced(grid_dir)
    started = before[0] if before else dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    retrained = sorted((before[1] if before else frozenset()) | set(ids))
    write_json_atomic(Path(grid_dir) / FORCED, {"started": started, "retrained": retrained})


def end_forced(grid_dir: Path) -> None:
    """The forced run is over: every cell was retrained."""
    (Path(grid_dir) / FORCED).unlink(missing_ok=True)
