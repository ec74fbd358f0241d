"""Real Prefect API servers for the tests: the session's (:func:`api_in_process`), a `prefect server
start` of a test's own, and the `prefect` command against it.

The own servers serve the deployment test (tests/test_deploy.py) and the browser test (tests/test_ui.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")
# The deployment's ECS settings come from these Prefect variables (prefect.yaml); a deploy
# refuses to register while a required one is unset.
ECS_VARIABLES = {"autolabel_cluster": "autolabel-cluster", "autolabel_capacity_provider": "autolabel-gpu",
                 "autolabel_task_definition": "autolabel-train", "autolabel_bucket": "autolabel-cells",
                 "autolabel_cells_prefix": "grids", "autolabel_region": "us-east-1"}


DATABASE = "prefect.db"  # in PREFECT_HOME, where a server with the default settings keeps it


def migrated_database(folder: Path) -> None:
    """Create Prefect's database in ``folder`` (a PREFECT_HOME), migrated to this version's head:
    ``prefect server database upgrade``, as a server would on its first start."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(folder), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    prefect(env, "--no-prompt", "server", "database", "upgrade", "--yes")
    assert (folder / DATABASE).is_file(), sorted(p.name for p in folder.iterdir())


def seed_home(home: Path, migrated: Path) -> Path:
    """``home`` with a copy of the migrated database in ``migrated``: a server started there finds
    its tables at the current revision, and skips the migrations of a fresh database (about 8 s
    of CPU on this project's 2-core machine, 2026-12-05), for each test that starts one."""
    import shutil

    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(migrated / DATABASE, home / DATABASE)
    return home


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def api_in_process(home: Path, timeout_s: float = 120) -> Iterator[str]:
    """The API server Prefect starts for itself when none is set (``SubprocessASGIServer``, without
    the UI), on the database in ``home``; while open, this process's flows and
    clients use it. Yields its URL. On a copy of the session's migrated database it answers in
    about 5 s, against 11 s on a fresh one (2026-12-06, this project's 2-core machine)."""
    from prefect._internal.concurrency.services import QueueService
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_DATABASE_CONNECTION_URL,
        temporary_settings,
    )

    with temporary_settings({PREFECT_SERVER_DATABASE_CONNECTION_URL: f"sqlite+aiosqlite:///{home / DATABASE}"}):
        server = SubprocessASGIServer(port=free_port())  # the database's setting travels in its environment
        server.start(timeout=timeout_s)
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield server.api_url
            QueueService.drain_all(timeout=30)  # the logs and events still queued, sent (every service)
    finally:
        server.stop()


@contextmanager
def prefect_server(home: Path, timeout_s: float = 120) -> Iterator[dict[str, str]]:
    """Start a server on a free port with a private PREFECT_HOME; yield the environment that reaches it."""
    with prefect_server_process(home, timeout_s) as (_, env):
        yield env


@contextmanager
def prefect_server_process(home: Path, timeout_s: float = 120) -> Iterator[tuple[subprocess.Popen, dict[str, str]]]:
    """:func:`prefect_server`, with the server's process too (a test that kills it)."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    # The UI asks /ui-settings where the API is; without this it would look on port 4200.
    env |= {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_API_URL": api}
    proc = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + timeout_s
        while True:
            try:
                urllib.request.urlopen(api + "/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError("prefect server exited") from None
                if time.time() > deadline:
                    raise RuntimeError(f"prefect server did not answer within {timeout_s:.0f} s") from None
                time.sleep(0.3)
        yield proc, {**env, "PREFECT_API_URL": api}
    finally:
        try:
            os.killpg(proc.pid, 15)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


def prefect(env: dict[str, str], *args: str, timeout: float = 180, check: bool = True,
            **kw: Any) -> subprocess.CompletedProcess:
    """Run the `prefect` command from the repository root; with ``check``, fail on a non-zero exit."""
    out = subprocess.run([PREFECT, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw)
    if check:
        assert out.returncode == 0, f"prefect {' '.join(args)}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def api(env: dict[str, str], method: str, path: str, body: Any = None) -> Any:
    """One call of the server's REST API (what the UI itself sends)."""
    req = urllib.request.Request(env["PREFECT_API_URL"] + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        text = r.read()
    return json.loads(text) if text else None


def set_variables(env: dict[str, str], values: dict[str, str]) -> None:
    for name, value in values.items():
        api(env, "POST", "/variables/", {"name": name, "value": value})
