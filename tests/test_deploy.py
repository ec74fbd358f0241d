"""`prefect deploy --all` against a real local `prefect server`, then a run of the deployment
through a process worker: the path a run started from the UI takes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """A `prefect server start` of its own, on a free port, with a private home."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(tmp_path / "home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    proc = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(api + "/health", timeout=2)
            break
        except OSError:
            assert proc.poll() is None, "prefect server exited"
            time.sleep(0.5)
    else:
        pytest.fail("prefect server did not answer within 120 s")
    yield {**env, "PREFECT_API_URL": api}
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


def prefect(env, *args, timeout=180, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run([PREFECT, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw)
    assert out.returncode == 0, f"prefect {' '.join(args)}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def test_deploy_all_then_a_ui_style_run_through_a_process_worker(server, tmp_path):
    spec = tmp_path / "ui.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "ui",
        "static": {"dataset": {"kind": "synthetic", "seed": 5, "subjects": 8, "rows": 32, "cols": 64},
                   "partition": 0.25, "device": "cpu"},
        "hyper": {"lr": [0.003]},
        "plan": [{"num_epochs": 1}],
    }))
    prefect(server, "work-pool", "create", "autolabel-orchestrator", "--type", "process",
            "--base-job-template", "deployments/work-pool-process.json")
    prefect({**server, "AUTOLABEL_SKIP_IMAGE_BUILD": "1"}, "--no-prompt", "deploy", "--all")

    listed = prefect(server, "deployment", "ls").stdout
    assert "grid-search/grid-search" in listed

    worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "autolabel-orchestrator", "--run-once"],
                              env=server, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        run = prefect(server, "deployment", "run", "grid-search/grid-search",
                      "--param", "backend=local", "--param", f"spec={spec}", "--param", "max_parallel=1",
                      "--watch", "--watch-timeout", "400", timeout=460)
        assert "Completed" in run.stdout, run.stdout[-3000:]
    finally:
        worker.terminate()
        log = worker.communicate(timeout=60)[0]
    assert "Traceback" not in log, log[-3000:]

    (cell,) = (tmp_path / "ui" / "cells").iterdir()
    assert json.loads((cell / "metrics.json").read_text())["status"] == "complete"
    assert (tmp_path / "ui" / "summary.md").exists()
