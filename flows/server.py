"""The command line's temporary Prefect API server, which never outlives its flow.

    with temporary_api():      # PREFECT_API_URL set: nothing; else a local server for this run
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
import socket
import subprocess
import sys
import time
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
