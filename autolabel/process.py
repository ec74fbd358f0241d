"""Child processes that never outlive the process that started them.

    subprocess.Popen(cmd, preexec_fn=die_with_parent)   # Linux: SIGTERM when the parent dies

A leaf module (no torch, no other autolabel module), so the flows' runners and their temporary
API server use it without importing the trainer.
"""

from __future__ import annotations

import ctypes
import signal


def die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM when the parent (the thread that started it) dies
    (Linux PR_SET_PDEATHSIG). A trainer stops on SIGTERM after checkpointing the epoch in
    progress, so a killed flow or pack loses no trained epoch; the cell's lock keeps a quick
    rerun from racing the dying trainer (it exits 75 and is retried)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass
