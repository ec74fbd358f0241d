"""`prefect deploy --all` against a real local `prefect server`, then a run of the deployment
through a process worker: the path a run started from the UI takes."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
import yaml

from tests.prefect_server import (
    ECS_VARIABLES,
    PREFECT,
    ROOT,
    api,
    prefect,
    prefect_server,
    set_variables,
)

pytestmark = pytest.mark.slow

REQUIRED = ("autolabel_cluster", "autolabel_capacity_provider", "autolabel_task_definition", "autolabel_bucket")


@pytest.fixture
def server(tmp_path, prefect_home):
    """A `prefect server start` of its own, on a free port, with a private home."""
    with prefect_server(prefect_home(tmp_path / "home")) as env:
        yield env


def test_deploy_all_then_a_ui_style_run_through_a_process_worker(server, tmp_path):
    spec = tmp_path / "ui.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "ui",
        "static": {"dataset": {"kind": "synthetic", "seed": 5, "subjects": 8, "rows": 32, "cols": 64},
                   "partition": 0.25, "device": "cpu"},
        "hyper": {"lr": [0.003]},
        "plan": [{"num_epochs": 1}],
    }))
    # The pool and the listings through the REST API (what the UI sends): each `prefect` command
    # costs seconds of import; `prefect deploy` itself is what is under test.
    api(server, "POST", "/work_pools/", {"name": "autolabel-orchestrator", "type": "process", "base_job_template":
                                         json.loads((ROOT / "deployments" / "work-pool-process.json").read_text())})
    deploy = {**server, "AUTOLABEL_SKIP_IMAGE_BUILD": "1"}
    # Unset ECS variables: refused, each named, nothing registered.
    refused = prefect(deploy, "--no-prompt", "deploy", "--all", check=False)
    assert refused.returncode != 0
    said = refused.stdout + refused.stderr
    for name in REQUIRED:
        assert f"the Prefect variable {name} is unset" in said, said[-3000:]
    assert not api(server, "POST", "/deployments/filter", {})
    set_variables(server, ECS_VARIABLES)
    prefect(deploy, "--no-prompt", "deploy", "--all")
    dep = api(server, "GET", "/deployments/name/grid-search/grid-search")

    # A run as the UI's Run button creates it, then the worker that picks it up.
    run = api(server, "POST", f"/deployments/{dep['id']}/create_flow_run", {"parameters": {
        "backend": "local", "spec": str(spec), "max_parallel": 1}})
    worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "autolabel-orchestrator", "--run-once"],
                              env=server, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 400
        state = api(server, "GET", f"/flow_runs/{run['id']}")["state"]
        while state["type"] not in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") and time.monotonic() < deadline:
            time.sleep(0.5)
            state = api(server, "GET", f"/flow_runs/{run['id']}")["state"]
        assert state["type"] == "COMPLETED", state
    finally:
        worker.terminate()
        log = worker.communicate(timeout=60)[0]
    assert "Traceback" not in log, log[-3000:]

    (cell,) = (tmp_path / "ui" / "cells").iterdir()
    assert json.loads((cell / "metrics.json").read_text())["status"] == "complete"
    assert (tmp_path / "ui" / "summary.md").exists()
