"""A cell directory: its file names, the one metrics.json reader, and the one atomic writer.

The trainer writes a cell through this module and the flows read it through this module,
so both agree on what a cell holds and on when it is done::

    options.json, plan.json   the trainer's two inputs (written by the flow)
    checkpoint.pt             resume point, deleted when the cell completes
    history.csv, training.log one row / line per epoch
    runner.log                the local runner's launches and the trainer's output
    model.pt                  best weights, and what rebuilds the model
    metrics.json              written last and atomically: status complete means done
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from autolabel.options import CellMetrics

OPTIONS, PLAN, METRICS = "options.json", "plan.json", "metrics.json"
CHECKPOINT, HISTORY, LOG, MODEL = "checkpoint.pt", "history.csv", "training.log", "model.pt"
RUNNER_LOG = "runner.log"
INPUTS = (OPTIONS, PLAN)
# What a finished cell keeps, metrics.json last: copied in this order from S3 to the local grid.
RESULTS = (HISTORY, LOG, MODEL, METRICS)


def _umask() -> int:
    # os.umask can only be read by setting it; set it straight back.
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()  # read once at import: the process's umask does not change under us


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through ``write(tmp)``, fsync it, and rename it into place.

    A reader (or a rerun after a kill at any instant) sees the old file or the whole new
    one, never a part. The file gets the permissions of a plain ``open()`` (0666 less the
    umask), not mkstemp's 0600, so a lab's group can read its results.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~UMASK)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sync_dir(path.parent)


def sync_dir(folder: Path) -> None:
    """fsync a folder, so a rename in it survives a power cut (a no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda p: p.write_text(text))


def write_json_atomic(path: Path, obj: Any) -> None:
    """JSON with sorted keys and a final newline, atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_metrics(cell_dir: Path) -> CellMetrics | str | None:
    """The cell's metrics.json: None if there is none, a one-line problem if it cannot be read."""
    path = Path(cell_dir) / METRICS
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:  # a folder in its place, no permission, ...
        return f"{path}: unreadable ({e.strerror or e}); delete it and rerun the cell"
    try:
        return CellMetrics.model_validate_json(text)
    except ValidationError as e:
        first = str(e.errors()[0].get("msg", e)).splitlines()[0]
        return f"{path}: unreadable metrics.json ({first}); delete it and rerun the cell"


def is_complete(cell_dir: Path) -> bool:
    """Whether the cell is done: its metrics.json (written last) says complete."""
    metrics = read_metrics(cell_dir)
    return isinstance(metrics, CellMetrics) and metrics.status == "complete"


def complete_ids(cells_root: Path) -> set[str]:
    """Ids (folder names) of the complete cells under ``cells_root`` (one directory scan)."""
    try:
        entries = list(os.scandir(cells_root))
    except OSError:
        return set()
    return {e.name for e in entries if e.is_dir(follow_symlinks=False) and is_complete(Path(e.path))}
