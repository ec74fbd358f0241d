"""One holder per folder: the lock a grid's runner and each cell's trainer take.

    with FolderLock(cell_dir):        # raises LockBusy at once if another process holds it
        train(...)

The lock is ``<folder>/.lock``, held with ``flock(LOCK_EX | LOCK_NB)`` on a file descriptor
kept open for the holder's lifetime. The file names its holder (``pid``, ``host``,
``started`` in ISO 8601, one JSON line), so a second taker's error says who holds it.

What it guarantees, on a local disk (ext4, xfs, tmpfs, APFS):

- at most one holder per folder, across threads, processes and users of the machine;
- a holder that dies in any way (SIGKILL, OOM, a crash) releases the lock: the kernel drops
  a flock when the last descriptor of it closes. The file it leaves behind is stale, not
  held, and the next taker takes it over; no pid guessing is involved;
- the holder text is never seen half-written: the winner writes it to a new file that it
  already holds, then renames that over ``.lock``. A taker counts as the winner only if
  the file it holds is still the one at ``.lock`` after its flock succeeded, so two
  racers for a stale lock cannot both win (the loser finds the path renamed and retries);
- children do not inherit it: the descriptor is opened with ``O_CLOEXEC`` (closed on exec,
  as Python makes every descriptor by default, PEP 446)
  and a forked child closes its copy at once (``os.register_at_fork``), so a trainer's
  worker or a shell it starts never keeps a lock alive after its parent died.

On NFS, Linux implements flock with the server's byte-range locks (NFSv4, or NFSv3 with
lockd), so the lock holds across clients, and rename is atomic on the server. But a client
that crashes or loses the network keeps its lock until the server's lease expires (NFSv4:
90 s by default), and a mount with ``nolock`` or ``local_lock=flock`` makes the lock local
to each client, with no exclusion between machines. S3 and other object stores have no
locks; keep grid folders that several machines write on a local disk or a locking NFS.

No torch, no Prefect: the dry run and the trainer both import this.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
import weakref
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

LOCK_FILE = ".lock"
RACE_RETRIES = 50  # a taker that lost a rename race tries again; each retry is microseconds of work
SETTLE_S = 0.01  # a holder between its flock and its rename is given this long to name itself

_held: weakref.WeakSet[FolderLock] = weakref.WeakSet()  # locks of this process, closed in a forked child


class LockBusy(RuntimeError):
    """Another live process holds the folder's lock; the message names it and the folder."""

    def __init__(self, folder: Path, holder: dict[str, Any]):
        self.folder = folder
        self.holder = holder
        who = describe_holder(holder)
        super().__init__(f"{folder}: busy: held by {who}; wait for it to end or stop it, then retry")


def describe_holder(holder: dict[str, Any]) -> str:
    if not holder:
        return "a process that has not yet written its name"
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('started', '?')}"


def process_start(pid: int) -> str | None:
    """When a process started, in clock ticks since boot (Linux /proc); None when unknown or gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def holder_alive(pid: int, host: str, start: str | None = None) -> bool | None:
    """Is this process still running? None when it runs on another host (unknowable here).

    ``start`` (from :func:`process_start`) tells a reused pid from the original process.
    """
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    if start is not None:
        now = process_start(pid)
        return now is None or now == start
    return True


def this_process() -> dict[str, Any]:
    """The holder text of the calling process."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "start": process_start(os.getpid()),
    }


class FolderLock:
    """An exclusive, non-blocking lock on a folder; a context manager. Not reentrant."""

    def __init__(self, folder: str | Path, name: str = LOCK_FILE):
        self.folder = Path(folder)
        self.path = self.folder / name
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> FolderLock:
        """Take the lock or raise LockBusy at once."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: already held by this FolderLock")
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(RACE_RETRIES):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = read_holder(fd)
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                if settled(holder):
                    raise LockBusy(self.folder, holder) from None
                time.sleep(SETTLE_S)
                continue
            if not same_file(fd, self.path):  # a racer renamed its own file in meanwhile: retry
                os.close(fd)
                continue
            self._fd = self._name_holder(fd)
            _held.add(self)
            return self
        raise LockBusy(self.folder, read_holder_at(self.path))

    def _name_holder(self, fd: int) -> int:
        """Write the holder text to a new file, hold it, rename it over the lock; return its fd."""
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
        new = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(new, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody else knows this file yet
            os.write(new, (json.dumps(this_process()) + "\n").encode())
            os.fsync(new)
            os.replace(tmp, self.path)  # while we hold the old one: nobody can win in between
        except BaseException as e:
            os.close(new)
            tmp.unlink(missing_ok=True)
            os.close(fd)
            if isinstance(e, OSError) and e.filename is None:  # os.write names no file: say which (a full disk)
                raise OSError(e.errno, e.strerror, str(self.path)) from e
            raise
        os.close(fd)
        return new

    def release(self) -> None:
        """Remove the lock file and let go; a no-op when not held."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        _held.discard(self)
        try:
            if same_file(fd, self.path):
                self.path.unlink()  # still held: nobody can have replaced it; takers see the path gone
        finally:
            os.close(fd)

    def _forget_in_child(self) -> None:
        """In a forked child: close our copy without touching the parent's lock."""
        if self._fd is not None:
            os.close(self._fd)  # the parent's descriptor still holds the flock
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        if self._fd is not None:
            os.close(self._fd)


def settled(holder: dict[str, Any]) -> bool:
    """Whether a busy lock's text names its real holder, not a dead one the winner is replacing."""
    if not holder:
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return True  # not ours to judge: report it as it is
    alive = holder_alive(pid, str(holder.get("host", "")), holder.get("start"))
    return alive is not False


def same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def read_holder(fd: int) -> dict[str, Any]:
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace")
        holder = json.loads(text)
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def read_holder_at(path: Path) -> dict[str, Any]:
    """Who holds (or last held) the lock at ``path``; {} when nobody wrote it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        return read_holder(fd)
    finally:
        os.close(fd)


def _close_inherited() -> None:
    for lock in list(_held):
        lock._forget_in_child()


os.register_at_fork(after_in_child=_close_inherited)
