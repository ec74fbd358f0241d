"""A cell directory: its file names, the one metrics.json reader, and the one atomic writer.

The trainer writes a cell through this module and the flows read it through this module,
so both agree on what a cell holds and on when it is done::

    options.json, plan.json   the trainer's two inputs (written by the flow)
    checkpoint.pt             resume point, deleted when the cell completes
    history.csv, training.log one row / line per epoch
    runner.log                the local runner's launches and the trainer's output
    model.pt                  best weights, and what rebuilds the model
    metrics.json              written last and atomically: status complete means done

A cell given as ``s3://bucket/prefix`` is staged: :func:`open_cell` downloads its inputs
(and checkpoint) into a scratch folder, training writes there, and :func:`push` and
:func:`write_metrics` upload what changed, metrics.json last.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

from pydantic import ValidationError

from autolabel import storage
from autolabel.errors import BadInput
from autolabel.options import CellMetrics, CellOptions, Plan
from autolabel.validation import format_validation_error

OPTIONS, PLAN, METRICS = "options.json", "plan.json", "metrics.json"
CHECKPOINT, HISTORY, LOG, MODEL = "checkpoint.pt", "history.csv", "training.log", "model.pt"
RUNNER_LOG = "runner.log"
INPUTS = (OPTIONS, PLAN)
# What a finished cell keeps, metrics.json last: copied in this order from S3 to the local grid.
RESULTS = (HISTORY, LOG, MODEL, METRICS)
HISTORY_COLUMNS = (
    "repeat", "round", "epoch", "lr", "batch_size", "train_bce", "train_dice", "train_loss",
    "val_bce", "val_dice", "val_loss", "val_mean_dice", "seconds",
)  # fmt: skip


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
    except BaseException as e:
        # A full disk, however the writer reports it (torch.save raises RuntimeError), is an
        # OSError naming the file: callers tell it from bad input (autolabel.errors.no_space).
        full = isinstance(e, Exception) and disk_full(path.parent)
        tmp.unlink(missing_ok=True)
        if full or (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)):
            raise OSError(errno.ENOSPC, "No space left on device", str(path)) from e
        raise
    sync_dir(path.parent)


def disk_full(folder: Path) -> bool:
    """Whether the file system of ``folder`` has (next to) no space left for this process."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 * 1024


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


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete the temporaries :func:`write_atomic` leaves when its process is killed mid-write
    (a checkpoint's can be hundreds of MB). Only for a folder whose writer holds its lock."""
    gone = []
    for tmp in Path(folder).glob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            gone.append(tmp)
    return gone


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda p: p.write_text(text))


def write_json_atomic(path: Path, obj: Any) -> None:
    """JSON with sorted keys and a final newline, atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_metrics(cell: Path | str, client=None) -> CellMetrics | str | None:
    """The cell's metrics.json: None if there is none, a one-line problem if it cannot be read.

    ``cell`` is a local folder or an ``s3://`` cell (read with ``client``, default boto3's).
    """
    if storage.is_s3(str(cell)):
        shown = storage.join(str(cell), METRICS)
        raw = storage.read_bytes(shown, client)
    else:
        path = Path(cell) / METRICS
        shown = str(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raw = None
        except OSError as e:  # a folder in its place, no permission, ...
            return f"{path}: unreadable ({e.strerror or e})"
    if raw is None:
        return None
    try:
        return CellMetrics.model_validate_json(raw)
    except ValidationError as e:
        first = str(e.errors()[0].get("msg", e)).splitlines()[0]
        return f"{shown}: unreadable metrics.json ({first})"


def is_complete(cell: Path | str, client=None) -> bool:
    """Whether the cell (a local folder or an ``s3://`` cell) is done: its metrics.json, written
    last, says complete."""
    metrics = read_metrics(cell, client)
    return isinstance(metrics, CellMetrics) and metrics.status == "complete"


def complete_ids(cells_root: Path) -> set[str]:
    """Ids (folder names) of the complete cells under ``cells_root`` (one directory scan)."""
    return scan_cells(cells_root)[0]


def scan_cells(cells_root: Path) -> tuple[set[str], dict[str, str]]:
    """(ids of the complete cells, {id: problem} of the cells whose metrics.json cannot be read)
    under ``cells_root``, in one directory scan: both commands name such a file rather than
    silently counting the cell as not done."""
    try:
        entries = list(os.scandir(cells_root))
    except OSError:
        return set(), {}
    done, unreadable = set(), {}
    for e in entries:
        # A cell folder may be a link (to another disk, say): the trainer follows it, so the count does.
        if not e.is_dir():
            continue
        m = read_metrics(Path(e.path))
        if isinstance(m, str):
            unreadable[e.name] = m
        elif m is not None and m.status == "complete":
            done.add(e.name)
    return done, unreadable


# ----------------------------------------------------------------------------- a cell being trained


@dataclass
class CellDir:
    """A cell as given on the command line (``uri``) and the local folder training writes in."""

    uri: str
    work: Path

    @property
    def remote(self) -> bool:
        return storage.is_s3(self.uri)

    def name(self, file: str) -> str:
        """A file of the cell as the user knows it (local path or s3 URI), for messages."""
        return storage.join(self.uri, file) if self.remote else str(self.work / file)


@contextmanager
def open_cell(uri: str, force: bool, idle: Callable[[], ContextManager] = nullcontext) -> Iterator[CellDir]:
    """A local cell as is; a remote one downloaded into a scratch folder that is removed afterwards.

    The downloads run inside ``idle()``: the trainer passes the CUDA capture gate's idle
    stretch (``RunControl.gate``, autolabel/gate.py), so a graph capture in another thread need not wait for them.
    """
    if not storage.is_s3(uri):
        yield CellDir(uri, Path(uri))
        return
    storage.split_s3(uri)  # a malformed URI fails here with a message naming it
    scratch = Path(tempfile.mkdtemp(prefix="autolabel-cell-"))
    try:
        cell = CellDir(uri.rstrip("/"), scratch)
        names = [OPTIONS, PLAN, METRICS] + ([] if force else [CHECKPOINT])
        with idle():
            for name in names:
                storage.download_file(cell.name(name), scratch / name)
        yield cell
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def read_json_file(path: Path, shown: str) -> Any:
    """Parse one JSON input; a missing file or a syntax error becomes a one-line BadInput."""
    if not path.is_file():
        raise BadInput(f"{shown}: not found; a cell directory needs {OPTIONS} and {PLAN}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BadInput(f"{shown}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"{shown}: unreadable ({e})") from None


def load_cell(cell: CellDir) -> tuple[CellOptions, Plan]:
    """options.json and plan.json, validated by the same models the grid spec uses."""
    parsed = []
    for file, model in ((OPTIONS, CellOptions), (PLAN, Plan)):
        raw = read_json_file(cell.work / file, cell.name(file))
        try:
            parsed.append(model.model_validate(raw))
        except ValidationError as e:
            raise BadInput("\n".join(format_validation_error(cell.name(file), raw, e))) from None
    return parsed[0], parsed[1]


def write_history(cell: CellDir, rows: list[dict], log: list[str]) -> None:
    """history.csv and training.log, rewritten whole (no duplicate rows after a resume)."""

    def write_csv(p: Path) -> None:
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS)
            w.writeheader()
            w.writerows(rows)

    write_atomic(cell.work / HISTORY, write_csv)
    write_atomic(cell.work / LOG, lambda p: p.write_text("".join(line + "\n" for line in log)))


def read_history(cell: Path) -> list[dict[str, str]] | None:
    """A local cell's history.csv as rows of text, the one reader of it (the scores at a halving cut,
    a rebuilt metrics.json, the learning curves); None when it has none or it cannot be read (a
    cell that never finished an epoch)."""
    try:
        with open(Path(cell) / HISTORY, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return rows if rows and all(k in rows[0] for k in HISTORY_COLUMNS) else None


def write_metrics(cell: CellDir, metrics: CellMetrics) -> None:
    """metrics.json, atomically and last (uploaded last for a remote cell): its presence means done."""
    write_json_atomic(cell.work / METRICS, metrics.model_dump(mode="json"))
    if cell.remote:
        storage.upload_file(cell.work / METRICS, cell.name(METRICS))


def fail_cell(cell: CellDir, status: str, message: str) -> None:
    """Record a failed cell in metrics.json (only for a cell that exists: not for a typo in the path)."""
    if (cell.work / OPTIONS).is_file():
        write_metrics(cell, CellMetrics(status=status, message=message))


def push(cell: CellDir, names: list[str], idle: Callable[[], ContextManager] = nullcontext) -> None:
    """Upload these files of a remote cell (a no-op for a local one), inside ``idle()`` (see open_cell)."""
    if not cell.remote:
        return
    with idle():
        for name in names:
            if (cell.work / name).is_file():
                storage.upload_file(cell.work / name, cell.name(name))


def delete(cell: CellDir, name: str) -> None:
    """Remove a file of the cell, here and, for a remote cell, in the bucket."""
    storage.delete(cell.work / name)
    if cell.remote:
        storage.delete(cell.name(name))
