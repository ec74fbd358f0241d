"""The folder lock, with real processes: one winner among racers, takeover after SIGKILL, no inheritance."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from autolabel.lock import FolderLock, LockBusy, read_holder_at

ROOT = Path(__file__).resolve().parent.parent


def python(code: str, *args: str, **kw) -> subprocess.Popen:
    """A child Python that imports this checkout's autolabel."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


HOLD = """
    import sys, time
    from autolabel.lock import FolderLock
    lock = FolderLock(sys.argv[1]).acquire()
    print("held", flush=True)
    time.sleep(60)
"""


def hold_in_child(folder: Path) -> subprocess.Popen:
    proc = python(HOLD, str(folder))
    assert proc.stdout.readline().strip() == "held", proc.stderr.read()
    return proc


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_a_second_taker_is_refused_at_once_with_the_holder_named(tmp_path):
    holder = hold_in_child(tmp_path)
    try:
        start = time.perf_counter()
        with pytest.raises(LockBusy) as err:
            FolderLock(tmp_path).acquire()
        assert time.perf_counter() - start < 1.0  # non-blocking: no wait for the holder
        message = str(err.value)
        assert "\n" not in message and message.startswith(f"{tmp_path}: busy: held by pid {holder.pid} on ")
        assert socket.gethostname() in message
        started = err.value.holder["started"]  # ISO 8601, with its time zone
        assert started in message and started.endswith("+00:00") and "T" in started
    finally:
        kill(holder)


def test_a_holder_killed_by_sigkill_is_taken_over(tmp_path):
    holder = hold_in_child(tmp_path)
    kill(holder)
    assert read_holder_at(tmp_path / ".lock")["pid"] == holder.pid  # the stale file is still there
    with FolderLock(tmp_path) as lock:
        assert lock.held and read_holder_at(lock.path)["pid"] == os.getpid()
    assert not (tmp_path / ".lock").exists()  # a clean release leaves no file


def test_one_process_holds_it_once(tmp_path):
    with FolderLock(tmp_path):
        with pytest.raises(LockBusy):
            FolderLock(tmp_path).acquire()  # another descriptor, same process: refused too
    FolderLock(tmp_path).acquire().release()


RACE = """
    import sys, time
    from autolabel.lock import FolderLock, LockBusy
    go = float(sys.argv[2])
    while time.time() < go:
        pass
    try:
        lock = FolderLock(sys.argv[1]).acquire()
    except LockBusy:
        print("busy", flush=True)
    else:
        print("won", flush=True)
        time.sleep(0.5)  # hold it while the others try
"""


@pytest.mark.parametrize("stale", [False, True], ids=["fresh", "stale"])
def test_racers_for_a_lock_have_exactly_one_winner(tmp_path, stale):
    for round_ in range(2):
        folder = tmp_path / f"r{round_}"
        if stale:  # left by a holder that died: a file, no flock
            kill(hold_in_child(folder))
        go = time.time() + 1.0  # every child is started and spinning by then
        procs = [python(RACE, str(folder), str(go)) for _ in range(6)]
        outs = [p.communicate(timeout=30)[0].strip() for p in procs]
        assert sorted(outs) == ["busy"] * 5 + ["won"], outs


FORK_AND_EXEC = """
    import os, subprocess, sys, time
    from autolabel.lock import FolderLock
    lock = FolderLock(sys.argv[1]).acquire()
    shell = subprocess.Popen(["sleep", "60"], close_fds=False)  # exec'd: O_CLOEXEC must close it
    ready_r, ready_w = os.pipe()
    forked = os.fork()
    if forked == 0:  # a forked worker that never execs; the fork hooks have run by now
        os.write(ready_w, b"x")
        time.sleep(60)
        os._exit(0)
    os.read(ready_r, 1)
    print(shell.pid, forked, flush=True)
    time.sleep(60)
"""


def test_children_do_not_keep_the_lock(tmp_path):
    parent = python(FORK_AND_EXEC, str(tmp_path))
    children = [int(x) for x in parent.stdout.readline().split()]
    assert len(children) == 2, parent.stderr.read()
    try:
        for pid in children:
            fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
            assert not any(fd.endswith(".lock") for fd in fds), (pid, fds)
        kill(parent)
        with FolderLock(tmp_path):  # the children are still alive, the lock is free
            assert all(Path(f"/proc/{pid}").exists() for pid in children)
    finally:
        for pid in children:
            os.kill(pid, signal.SIGKILL)
        kill(parent)
