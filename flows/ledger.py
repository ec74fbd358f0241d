"""The cost ledger: what the grid has spent, what is in flight, and why cells were not launched.

It is an append-only JSON-lines file in the grid's directory (``ledger.jsonl``), so a
resumed run counts what earlier runs spent. One line per event:

- ``{"event": "charge", "cells": [...], "usd": ..., "gpu_seconds": ..., ...}``: a finished
  attempt (a pack of cells), its measured device time times the hourly price;
- ``{"event": "skip", "cells": [...], "reason": "cost cap", "spent_usd": ..., ...}``: a
  launch refused because spent + in flight + its own estimate would pass the cap.

The flow reserves a pack's estimate before launching it and releases the reservation
when the attempt is charged, so parallel launches can never overshoot together.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LEDGER_FILE = "ledger.jsonl"


@dataclass
class Ledger:
    path: Path
    cap_usd: float | None = None
    spent_usd: float = 0.0
    per_cell_usd: dict[str, float] = field(default_factory=dict)
    _in_flight: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, grid_dir: Path, cap_usd: float | None = None) -> Ledger:
        """Load earlier spend from ``grid_dir/ledger.jsonl`` (a missing file is a new grid)."""
        ledger = cls(path=Path(grid_dir) / LEDGER_FILE, cap_usd=cap_usd)
        for entry in ledger.entries("charge"):
            ledger._count(entry)
        return ledger

    def entries(self, event: str) -> list[dict[str, Any]]:
        """Every ``event`` line on file, oldest first."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                # A line cut short by a killed run: its charge is unknown, the rest stands.
                continue
            if entry.get("event") == event:
                out.append(entry)
        return out

    def _count(self, entry: dict[str, Any]) -> None:
        self.spent_usd += float(entry["usd"])
        for cell, usd in entry.get("split_usd", {}).items():
            self.per_cell_usd[cell] = self.per_cell_usd.get(cell, 0.0) + float(usd)

    def _append(self, entry: dict[str, Any]) -> None:
        entry = {"time": round(time.time(), 3), **entry}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")

    @property
    def in_flight_usd(self) -> float:
        return sum(self._in_flight.values())

    def reserve(self, key: str, cells: list[str], estimate_usd: float) -> bool:
        """Reserve a launch's estimate if it fits under the cap; else log why it was skipped."""
        with self._lock:
            if self.cap_usd is not None:
                committed = self.spent_usd + self.in_flight_usd
                if committed + estimate_usd > self.cap_usd + 1e-12:
                    self._append(
                        {
                            "event": "skip",
                            "cells": cells,
                            "reason": "cost cap",
                            "cap_usd": self.cap_usd,
                            "spent_usd": round(self.spent_usd, 6),
                            "in_flight_usd": round(self.in_flight_usd, 6),
                            "estimate_usd": round(estimate_usd, 6),
                        }
                    )
                    return False
            self._in_flight[key] = self._in_flight.get(key, 0.0) + estimate_usd
            return True

    def release(self, key: str) -> None:
        with self._lock:
            self._in_flight.pop(key, None)

    def charge(
        self,
        cells: list[str],
        gpu_seconds: float,
        usd: float,
        work: dict[str, float] | None = None,
        **detail: Any,
    ) -> None:
        """Record a finished attempt; a pack's cost is split in proportion to each cell's work."""
        weights = work or {c: 1.0 for c in cells}
        total = sum(weights.get(c, 0.0) for c in cells) or float(len(cells))
        split = {c: usd * weights.get(c, 1.0) / total for c in cells}
        entry = {
            "event": "charge",
            "cells": cells,
            "gpu_seconds": round(gpu_seconds, 3),
            "usd": usd,
            "split_usd": split,
            **detail,
        }
        with self._lock:
            self._append(entry)
            self._count(entry)

    def over_cap(self) -> bool:
        """True when what is spent and reserved already passes the cap."""
        with self._lock:
            return self.cap_usd is not None and self.spent_usd + self.in_flight_usd > self.cap_usd + 1e-12

    def remaining_usd(self) -> float | None:
        if self.cap_usd is None:
            return None
        with self._lock:
            return self.cap_usd - self.spent_usd - self.in_flight_usd

    def skipped(self) -> list[dict[str, Any]]:
        """Every launch the cap refused, with the numbers that refused it."""
        return self.entries("skip")
