"""The command line's temporary Prefect API server, which never outlives its flow, and its watch.

    with temporary_api(), api_watch():     # PREFECT_API_URL set: that one; else a local server for this run
        grid_search(...)

Prefect starts its own temporary server (prefect.server.api.server.SubprocessASGIServer, in
prefect 3.9) as a plain child process: in the terminal's process group, so Ctrl-C interrupts
it while the flow still needs it to record the stop, and with nothing that ends it when the
flow dies by SIGKILL (seen: a uvicorn adopted by init, alive 6 minutes later). This one is the
same uvicorn app started in its own session (the terminal's signals reach only the flow, which
stops it last) with Linux's PR_SET_PDEATHSIG set to SIGTERM, so it shuts down when the flow's
process dies in any way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from autolabel.process import die_with_parent

STARTUP_S = 60.0  # a cold start on a busy 2-core machine takes a few seconds


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int) -> subprocess.Popen:
    """Prefect's API app under uvicorn on 127.0.0.1:port, its own session, dying with this process."""
    import prefect
    from prefect.settings import get_current_settings

    env = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True),
           "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
           # Offline, the server's telemetry would print an error at every start.
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
           "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "error", "--lifespan", "on",
           # Once its flow is gone nobody waits for its open requests: a bounded shutdown.
           "--timeout-graceful-shutdown", "5"]
    return subprocess.Popen(cmd, env=env, start_new_session=True,
                            preexec_fn=die_with_parent if sys.platform == "linux" else None)


def wait_healthy(proc: subprocess.Popen, url: str) -> None:
    import httpx

    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the temporary Prefect API server exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the temporary Prefect API server did not answer at {url} within {STARTUP_S:g} s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def drain_workers(timeout_s: float = 10.0) -> None:
    """Send the logs and events still queued while the server is up (they would go at exit, to nobody)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=timeout_s)


# The API's health is read every WATCH_S seconds. It is gone after MISSES refused connections in a
# row (nothing listens: its process died), or after SLOW_MISSES reads in a row that got no answer
# within WATCH_TIMEOUT_S (a server on a busy 2-core machine can be slow for seconds, and stopping a
# healthy run would be far worse than noticing a dead server a minute late).
WATCH_S = 1.0
WATCH_TIMEOUT_S = 5.0
MISSES = 3
SLOW_MISSES = 12
CHECKPOINT_GRACE_S = 120.0  # the trainers' time to checkpoint the epoch in progress and exit
EXIT_API_GONE = 69  # BSD sysexits' EX_UNAVAILABLE: a service this command needs is gone


@contextlib.contextmanager
def api_watch() -> Iterator[None]:
    """Watch the Prefect API while the flow runs. Once it stops answering, the flow can launch and
    record nothing more, and Prefect's own client would retry for minutes: so the watch stops the
    run as SIGTERM does (every trainer checkpoints its epoch in progress), waits for the trainers,
    says in one line that the API at URL is gone and how to resume, and ends the process with
    EXIT_API_GONE. Nothing done is lost: a rerun resumes from the checkpoints."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    done = threading.Event()
    watcher = threading.Thread(target=watch, args=(url, done), name="api-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join(timeout=WATCH_S + WATCH_TIMEOUT_S)


def watch(url: str, done: threading.Event) -> None:
    """The watch's thread: health reads until ``done``; the API gone, the run's end (see api_watch)."""
    import httpx

    misses = 0.0
    while not done.wait(WATCH_S):
        try:
            ok = httpx.get(f"{url}/health", timeout=WATCH_TIMEOUT_S).status_code == 200
            misses = 0.0 if ok else misses + 1 / SLOW_MISSES
        except httpx.ConnectError:  # refused: nothing listens there any more
            misses += 1 / MISSES
        except httpx.HTTPError:  # no answer in time: slow, or hung
            misses += 1 / SLOW_MISSES
        if misses >= 1 - 1e-9 and not done.is_set():
            end_without_api(url)


def end_without_api(url: str) -> None:
    """Stop the run (the flow's SIGTERM handler stops every trainer), wait for the trainers to
    checkpoint and exit, say so, and end the process: the flow cannot report to a dead API."""
    print(f"the Prefect API at {url} stopped answering: stopping every running cell (each checkpoints its "
          "epoch in progress)", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    deadline = time.monotonic() + CHECKPOINT_GRACE_S
    while living_children() and time.monotonic() < deadline:
        time.sleep(0.2)
    print(f"the Prefect API at {url} is gone; nothing done is lost: start it again (or unset PREFECT_API_URL "
          "for a temporary one) and rerun the same command to resume", file=sys.stderr, flush=True)
    os._exit(EXIT_API_GONE)


def living_children() -> list[int]:
    """This process's children that still run (not zombies): the local backend's trainers."""
    me, found = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] != "Z":  # fields: state, ppid, ...
            found.append(int(stat.parent.name))
    return found


@contextlib.contextmanager
def temporary_api() -> Iterator[None]:
    """A temporary API for the calls inside, unless PREFECT_API_URL names one."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    proc = start_server(port)
    try:
        wait_healthy(proc, url)
        with temporary_settings(updates={PREFECT_API_URL: url}):
            try:
                yield
            finally:
                drain_workers()
    finally:
        stop_server(proc)
