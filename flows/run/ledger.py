"""The cost ledger: what the grid has spent, what is in flight, and why cells were not launched.

It is an append-only JSON-lines file in the grid's directory (``ledger.jsonl``), so a
resumed run counts what earlier runs spent. One line per event:

- ``charge``: a finished attempt (a pack of cells), its measured device time times the
  hourly price, ``usd`` split over its cells in ``split_usd``;
- ``reserve``: a launch's estimate, held against the cap until its ``release``; it names
  its holder (``pid``, ``host``, ``start``) and the ledger instance (``run``);
- ``release``: the end of a reservation (``run`` and ``key``);
- ``instance``: an EC2 instance the grid's tasks ran on, as AWS bills it: ``seconds`` from its
  launch (or the grid's first task on it) to its termination (or, not yet known, the modelled
  idle tail: ``estimated``) x its hourly price is ``billed_usd``; ``usd`` is what that adds to
  the charges of the tasks on it (``tasks_usd``): boot, image pull, gaps, idle tail, idle GPUs;
- ``skip``: a launch refused because spent + every open reservation + its own estimate
  would pass the cap, with the numbers that refused it.

Every read and append holds ``flock`` on the file, and a decision (``reserve``) reads every
line written so far before it appends, so two processes sharing a ledger cannot pass the
cap together: each sees the other's charges and open reservations. Each append writes its whole
line or nothing: a write that fails part way (a full disk) is cut back off and raises, so no later
read meets half a line of it; then fsync.

When a reservation closes: at its release; or when its holder is known to be gone, which a
reader can tell only for a process on its own host (pid no longer running, or reused by a
process that started later; in the reader's own process, a ledger object no longer alive). A reservation from another host stays counted until its
release, since no reader here can see that host's processes; the skip line lists it.

A line that cannot be read (edited by hand, say) is never counted as zero: ``Ledger.open``
raises :class:`LedgerError` naming the file and line; a running ledger that meets one refuses
every further launch under a cap. A last line without its newline is an append that never
finished (every writer writes whole lines under the exclusive flock): under a cap it counts as
unknown spend, as above; without one it is a note, and the next append cuts it off.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from autolabel.lock import holder_alive, process_start

LEDGER_FILE = "ledger.jsonl"
EVENTS = ("charge", "instance", "reserve", "release", "skip")
SLACK_USD = 1e-12  # float sums of the same numbers in another order

# The ledgers alive in this process, by run: a reservation made here by a ledger that is gone
# (an earlier flow run in the same process) has nothing in flight any more.
_live_runs: weakref.WeakValueDictionary[str, Ledger] = weakref.WeakValueDictionary()


class LedgerError(ValueError):
    """A ledger that cannot be trusted, or an amount it refuses; one line naming file and line."""


class Ledger:
    """The grid's ledger, shared by threads of one process and by processes sharing the file."""

    def __init__(self, path: Path, cap_usd: float | None = None):
        self.path = Path(path)
        self.cap_usd = cap_usd
        self.run = uuid.uuid4().hex[:12]  # this instance's reservations, apart from other runs'
        self._me = {"pid": os.getpid(), "host": socket.gethostname(), "start": process_start(os.getpid())}
        self._lock = threading.Lock()  # flock is per open file, so threads of one process need this too
        self._offset = 0  # bytes of the file read so far (whole lines only)
        self._lines = 0  # lines read so far
        self._entries: list[dict[str, Any]] = []
        self._spent = 0.0
        self._per_cell: dict[str, float] = {}
        self._open: dict[tuple[str, str], dict[str, Any]] = {}  # (run, key) -> reserve entry
        self._problems: dict[int, str] = {}  # line number -> what is wrong with it
        self._torn: str | None = None  # a last line without its newline: an append that never finished
        _live_runs[self.run] = self

    @classmethod
    def open(cls, grid_dir: Path, cap_usd: float | None = None) -> Ledger:
        """Load earlier spend from ``grid_dir/ledger.jsonl`` (a missing file is a new grid).

        Raises LedgerError when a line cannot be read, so spend is never under-counted.
        """
        ledger = cls(Path(grid_dir) / LEDGER_FILE, cap_usd=cap_usd)
        with ledger._locked(shared=True):
            pass
        if ledger.problems:
            more = len(ledger.problems) - 1
            raise LedgerError(ledger.problems[0] + (f" (and {more} more unreadable lines)" if more else ""))
        return ledger

    # ------------------------------------------------------------------ reading

    @property
    def problems(self) -> list[str]:
        """One line per unreadable ledger line met so far, in file order; under a cap a torn last
        line too (its amount is unknown)."""
        torn = [self._torn] if self._torn and self.cap_usd is not None else []
        return [self._problems[n] for n in sorted(self._problems)] + torn

    @property
    def notes(self) -> list[str]:
        """What a run without a cap is told and may go on with: a torn last line, cut off at the next append."""
        return [self._torn] if self._torn and self.cap_usd is None else []

    @property
    def spent_usd(self) -> float:
        """Every charge on file, from any run."""
        with self._locked(shared=True):
            return self._spent

    @property
    def per_cell_usd(self) -> dict[str, float]:
        with self._locked(shared=True):
            return dict(self._per_cell)

    def entries(self, event: str) -> list[dict[str, Any]]:
        """Every ``event`` line on file, oldest first."""
        with self._locked(shared=True):
            return [e for e in self._entries if e["event"] == event]

    @contextmanager
    def _locked(self, shared: bool = False) -> Iterator[int | None]:
        """Hold the thread lock and the file's flock, with every line on file read; yield the fd."""
        with self._lock:
            if shared and not self.path.exists():
                yield None
                return
            if shared:  # read-only, so a dry run can read a ledger it may not write
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
                self._catch_up(fd)
                yield fd
            finally:
                os.close(fd)  # releases the flock

    def _catch_up(self, fd: int) -> None:
        """Read the lines appended since the last read; a last line without newline is torn."""
        size = os.fstat(fd).st_size
        if size <= self._offset:
            return
        data = os.pread(fd, size - self._offset, self._offset)
        *whole, tail = data.split(b"\n")
        for raw in whole:
            self._lines += 1
            self._read_line(raw)
        self._offset += len(data) - len(tail)
        # Writers append whole lines under an exclusive flock, so a tail seen under a flock is torn;
        # it stays unread (see _append).
        self._torn = None
        if tail:
            text = tail.decode(errors="replace")
            self._torn = (f"{self.path}: line {self._lines + 1}: cut short (no newline at its end): "
                          f"{text if len(text) <= 80 else text[:77] + '...'!r}: an append that never finished "
                          "(a full disk or a kill); its amount is unknown, so a run under a cap refuses it until "
                          "the line is repaired or deleted; without a cap it is cut off at the next append")

    def _read_line(self, raw: bytes) -> None:
        if not raw.strip():
            return
        try:
            entry = json.loads(raw)
            problem = check_entry(entry)
        except ValueError as e:
            problem = f"not JSON ({e})"
        if problem:
            self._problem(self._lines, raw, problem)
            return
        self._entries.append(entry)
        self._apply(entry)

    def _problem(self, line: int, raw: bytes, problem: str) -> None:
        text = raw.decode(errors="replace")
        text = text if len(text) <= 80 else text[:77] + "..."
        message = (
            f"{self.path}: line {line}: {problem}: {text!r}; its amount is unknown, so the cap cannot be "
            "enforced: repair the line (a charge's usd is gpu_seconds x the hourly price / 3600) or delete it, then rerun"
        )
        self._problems.setdefault(line, message)

    def _apply(self, entry: dict[str, Any]) -> None:
        kind = entry["event"]
        if kind == "instance":
            self._spent += entry["usd"]  # no cell's: the summary's per-cell split leaves it out
        elif kind == "charge":
            self._spent += entry["usd"]
            for cell, usd in entry.get("split_usd", {}).items():
                self._per_cell[cell] = self._per_cell.get(cell, 0.0) + usd
        elif kind == "reserve":
            self._open[(entry["run"], entry["key"])] = entry
        elif kind == "release":
            self._open.pop((entry["run"], entry["key"]), None)

    def _reserved(self) -> tuple[float, list[dict[str, Any]]]:
        """Open reservations of live holders (and of other hosts): their sum and the others' entries."""
        total, others, dead = 0.0, [], []
        for k, r in self._open.items():
            if r["run"] != self.run and not self._holder_alive(r):
                dead.append(k)  # its process is gone: nothing of it is in flight any more
                continue
            total += r["usd"]
            if r["run"] != self.run:
                others.append(r)
        for k in dead:
            del self._open[k]
        return total, others

    def _holder_alive(self, r: dict[str, Any]) -> bool:
        """False only when the reservation's holder is known to be gone; another host's counts as alive."""
        if (r["pid"], r["host"], r.get("start")) == (self._me["pid"], self._me["host"], self._me["start"]):
            return r["run"] in _live_runs
        return holder_alive(r["pid"], r["host"], r.get("start")) is not False

    # ------------------------------------------------------------------ writing

    def _append(self, fd: int, entry: dict[str, Any]) -> None:
        """One whole line, fsynced, or nothing and an OSError naming the file; counted at once.

        A torn last line (see _catch_up) is cut off first without a cap; under a cap it stays, as
        unknown spend, and this line starts on a fresh line after it.
        """
        entry = {"time": round(time.time(), 3), **entry}
        line = json.dumps(entry, sort_keys=True, allow_nan=False).encode() + b"\n"
        size = os.fstat(fd).st_size
        if self._torn and self.cap_usd is None:
            os.ftruncate(fd, self._offset)  # ours to cut: no writer holds the flock but this one
            size, self._torn = self._offset, None
        elif size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line  # never glue onto a line cut short by a crash
        try:
            view = memoryview(line)
            while view:  # os.write may write part of the line (a full disk): the rest, or an error
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as e:
            try:  # take back what part of the line was written: every later read stays whole
                os.ftruncate(fd, size)
            except OSError:
                pass
            raise OSError(e.errno, f"{e.strerror}; nothing was recorded", str(self.path)) from None
        self._catch_up(fd)

    def reserve(self, key: str, cells: list[str], estimate_usd: float) -> bool:
        """Reserve a launch's estimate if it fits under the cap; else log why it was skipped."""
        require_amount("estimate_usd", estimate_usd)
        with self._locked() as fd:
            reserved, others = self._reserved()
            refusal = self._refusal(reserved, estimate_usd)
            if refusal:
                self._append(fd, {
                    "event": "skip", "cells": cells, "reason": refusal, "cap_usd": self.cap_usd,
                    "spent_usd": round(self._spent, 6), "in_flight_usd": round(reserved, 6),
                    "estimate_usd": round(estimate_usd, 6),
                    "others": [{k: r[k] for k in ("host", "pid", "usd")} for r in others],
                })
                return False
            self._append(fd, {"event": "reserve", "run": self.run, "key": key, "cells": cells,
                              "usd": estimate_usd, **self._me})
            return True

    def _refusal(self, reserved: float, estimate_usd: float) -> str | None:
        if self.cap_usd is None:
            return None
        if self.problems:
            return "unreadable ledger"  # unknown spend: nothing more may launch under a cap
        if self._spent + reserved + estimate_usd > self.cap_usd + SLACK_USD:
            return "cost cap"
        return None

    def release(self, key: str) -> None:
        """End this instance's reservation ``key`` (a no-op if it has none)."""
        with self._locked() as fd:
            if (self.run, key) in self._open:
                self._append(fd, {"event": "release", "run": self.run, "key": key})

    def charge(
        self,
        cells: list[str],
        gpu_seconds: float,
        usd: float,
        work: dict[str, float] | None = None,
        **detail: Any,
    ) -> None:
        """Record a finished attempt; a pack's cost is split in proportion to each cell's work."""
        require_amount("gpu_seconds", gpu_seconds)
        require_amount("usd", usd)
        weights = work or {c: 1.0 for c in cells}
        total = sum(weights.get(c, 0.0) for c in cells) or float(len(cells))
        split = {c: usd * weights.get(c, 1.0) / total for c in cells}
        for c, v in split.items():
            require_amount(f"split_usd[{c}] (from work)", v)
        entry = {
            "event": "charge",
            "cells": cells,
            "gpu_seconds": round(gpu_seconds, 3),
            "usd": usd,
            "split_usd": split,
            **detail,
        }
        with self._locked() as fd:
            self._append(fd, entry)

    def charge_instance(self, instance_id: str, seconds: float, billed_usd: float, tasks_usd: float,
                        **detail: Any) -> float:
        """Record an instance's bill beyond its tasks' charges (never below 0); returns that excess."""
        for name, v in (("seconds", seconds), ("billed_usd", billed_usd), ("tasks_usd", tasks_usd)):
            require_amount(name, v)
        usd = max(0.0, billed_usd - tasks_usd)
        entry = {"event": "instance", "instance_id": instance_id, "seconds": round(seconds, 3), "usd": usd,
                 "billed_usd": billed_usd, "tasks_usd": tasks_usd, **detail}
        with self._locked() as fd:
            self._append(fd, entry)
        return usd

    def over_cap(self) -> bool:
        """True when what is spent and reserved already passes the cap (or spend is unknown)."""
        with self._locked(shared=True):
            if self.cap_usd is None:
                return False
            return bool(self.problems) or self._spent + self._reserved()[0] > self.cap_usd + SLACK_USD


def require_amount(name: str, value: Any) -> None:
    """A finite, non-negative number, or LedgerError saying which."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise LedgerError(f"ledger: {name} must be a finite number >= 0, got {value!r}; nothing was recorded")


def check_entry(entry: Any) -> str | None:
    """What is wrong with a parsed line, or None."""
    if not isinstance(entry, dict):
        return "not a JSON object"
    kind = entry.get("event")
    if kind not in EVENTS:
        return f"unknown event {kind!r} (known: {', '.join(EVENTS)})"
    if kind in ("charge", "instance", "reserve") and not is_amount(entry.get("usd")):
        return f"{kind} without a finite usd >= 0"
    if kind == "charge":
        split = entry.get("split_usd", {})
        if not isinstance(split, dict) or not all(is_amount(v) for v in split.values()):
            return "split_usd is not a mapping of finite amounts"
    if kind in ("reserve", "release") and not (isinstance(entry.get("run"), str) and isinstance(entry.get("key"), str)):
        return f"{kind} without run and key"
    if kind == "reserve" and not (isinstance(entry.get("pid"), int) and isinstance(entry.get("host"), str)):
        return "reserve without its holder's pid and host"
    return None


def is_amount(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
