"""The Prefect UI in a real browser: headless Chromium against a `prefect server` of the test's own.

    .venv/bin/python -m pytest -q tests/test_ui.py     # needs Debian's chromium and chromium-driver

`prefect deploy --all` registers the grid-search deployment (no image build); Chromium opens its
custom-run form, which must show every ECS setting as its own input and the instance type as a
choice; two runs are created through the API the form submits to and executed as a process
worker would (`python -m prefect.engine`): one on the local backend that completes, whose
artifact pages must show the summary and the cells table, and one with an unset ECS bucket
that must fail with one readable line and no traceback. Screenshots go to
$AUTOLABEL_TEST_ARTIFACTS/ui/ (default: the temp folder's autolabel-test-artifacts/ui/), never git.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from flows.cost.prices import PRICES
from flows.ecs.settings import EcsSettings
from tests.prefect_server import (
    ECS_VARIABLES,
    ROOT,
    api,
    prefect,
    prefect_server,
    set_variables,
)

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# The switches a browser needs on a closed, containerised machine: no sandbox (root), no GPU,
# /tmp instead of a small /dev/shm, and nothing that phones home.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,4400")
# Settings the form fills from the deployment's defaults (prefect.yaml <- the Prefect variables).
FILLED = {"cluster": "autolabel_cluster", "capacity_provider": "autolabel_capacity_provider",
          "task_definition": "autolabel_task_definition", "bucket": "autolabel_bucket",
          "prefix": "autolabel_cells_prefix", "region": "autolabel_region"}


def screenshots_dir() -> Path:
    root = Path(os.environ.get("AUTOLABEL_TEST_ARTIFACTS") or Path(tempfile.gettempdir()) / "autolabel-test-artifacts")
    out = root / "ui"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return out


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver

    for path in (CHROMIUM, CHROMEDRIVER):
        assert Path(path).exists(), f"{path} missing: tests/browser-deps.sh installs chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium'}")  # a fresh profile every time
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def wait_for_text(driver, text: str, timeout: float = 30) -> str:
    deadline = time.time() + timeout
    while True:
        body = driver.find_element("tag name", "body").text
        if text in body:
            return body
        assert time.time() < deadline, f"{text!r} not on {driver.current_url} within {timeout:.0f} s:\n{body[:2000]}"
        time.sleep(0.3)


def field_control(driver, title: str):
    """The control of the form field titled ``title``: the first input, text area or select in its
    own body (the schema form's markup, prefect 3.9.1: a property's header label, then its fields)."""
    header = (f"./div[@class='p-label__header']//span[@class='schema-form-property__label' and "
              f"(text()='{title}' or text()='{title} (Optional)')]")
    fields = driver.find_elements("xpath", f"//div[contains(@class, 'schema-form-property')][{header}]"
                                           "/div[@class='p-label__body']/fieldset")
    assert len(fields) == 1, f"form field {title!r}: found {len(fields)}"
    controls = fields[0].find_elements("xpath", "./div//*[self::textarea or self::input or self::select]")
    assert controls, f"form field {title!r} has no input of its own"
    return controls[0]


def execute(env: dict[str, str], run_id: str) -> subprocess.Popen:
    """What a process worker runs for a flow run: the deployment's pull step, then the flow."""
    return subprocess.Popen([sys.executable, "-m", "prefect.engine"], env={**env, "PREFECT__FLOW_RUN_ID": run_id},
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def artifact_id(env: dict[str, str], key: str) -> str:
    (found,) = api(env, "POST", "/artifacts/latest/filter", {"artifacts": {"key": {"any_": [key]}}})
    return found["latest_id"]


def run_logs(env: dict[str, str], run_id: str) -> list[str]:
    logs = api(env, "POST", "/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})
    return [entry["message"] for entry in logs]


def test_the_run_form_shows_ecs_inputs_and_a_run_from_it_completes_with_artifacts(tmp_path, browser, prefect_home):
    shots = screenshots_dir()
    spec = tmp_path / "uiform.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "uiform", "static": {"partition": 0.25, "device": "cpu"},
        "hyper": {"lr": [0.003, 0.004]}, "plan": [{"num_epochs": 1}],
    }))
    with prefect_server(prefect_home(tmp_path / "home")) as env:
        set_variables(env, ECS_VARIABLES)
        api(env, "POST", "/work_pools/", {"name": "autolabel-orchestrator", "type": "process", "base_job_template":
                                          json.loads((ROOT / "deployments" / "work-pool-process.json").read_text())})
        prefect({**env, "AUTOLABEL_SKIP_IMAGE_BUILD": "1"}, "--no-prompt", "deploy", "--all")
        dep = api(env, "GET", "/deployments/name/grid-search/grid-search")
        base = env["PREFECT_API_URL"].removesuffix("/api")

        # The custom-run form: each ECS setting its own input, filled from the deployment.
        browser.get(f"{base}/deployments/deployment/{dep['id']}/run")
        body = wait_for_text(browser, "Capacity Provider")
        browser.save_screenshot(str(shots / "run-form.png"))
        for name, field in EcsSettings.model_fields.items():
            if field.annotation in (bool,) or name in ("subnets", "security_groups"):
                continue  # a toggle and two lists ("Add item"), not text inputs
            control = field_control(browser, field.title or name.replace("_", " ").title())
            assert control.tag_name in ("input", "textarea"), f"ecs.{name}: a {control.tag_name}, not an input"
            if name in FILLED:
                assert control.get_attribute("value") == ECS_VARIABLES[FILLED[name]], f"ecs.{name}"
        for name in ("cluster", "bucket", "task_definition"):
            assert EcsSettings.model_fields[name].description.split(" (")[0] in body  # descriptions shown
        choice = field_control(browser, "instance_type")
        assert choice.tag_name == "select"
        assert [o.get_attribute("value") for o in choice.find_elements("tag name", "option")] == list(PRICES)
        # 'Property is type "None"' only for the top-level parameters whose None means something
        # (no cap, default output folder, ...), never inside the ECS settings.
        optional_unset = [k for k, v in dep["parameter_openapi_schema"]["properties"].items()
                          if {"type": "null"} in v.get("anyOf", []) and dep["parameters"].get(k) is None]
        assert body.count('Property is type "None"') == len(optional_unset), optional_unset

        # Two runs through the API the form submits to: one local that completes, one ECS run
        # whose bucket was cleared on the form.
        local = api(env, "POST", f"/deployments/{dep['id']}/create_flow_run", {"parameters": {
            "spec": str(spec), "backend": "local", "max_parallel": 2,
            "trainer": [sys.executable, "-m", "tests.stand_in"]}})
        bad = api(env, "POST", f"/deployments/{dep['id']}/create_flow_run", {"parameters": {
            "spec": str(spec), "out_dir": str(tmp_path / "bad"),
            "ecs": {**dep["parameters"]["ecs"], "bucket": ""}}})
        procs = [execute(env, local["id"]), execute(env, bad["id"])]
        outputs = [p.communicate(timeout=240)[0] for p in procs]

        state = api(env, "GET", f"/flow_runs/{local['id']}")["state"]
        assert state["type"] == "COMPLETED", outputs[0][-3000:]
        bad_state = api(env, "GET", f"/flow_runs/{bad['id']}")["state"]
        assert bad_state["type"] == "FAILED", outputs[1][-3000:]
        assert bad_state["message"].startswith("ecs.bucket: required for the ECS backend"), bad_state["message"]
        assert "\n" not in bad_state["message"]
        tb = [m for m in run_logs(env, bad["id"]) if "Traceback" in m]
        assert not tb, "\n".join(tb)[-6000:]

        # The run's artifact pages: the summary renders, the cells table lists both cells.
        browser.get(f"{base}/artifacts/artifact/{artifact_id(env, 'uiform-summary')}")
        wait_for_text(browser, "Grid summary: uiform")
        browser.save_screenshot(str(shots / "artifact-summary.png"))
        browser.get(f"{base}/artifacts/artifact/{artifact_id(env, 'uiform-cells')}")
        body = wait_for_text(browser, "lr0.003")
        assert "lr0.004" in body and "mean Dice" in body
        browser.save_screenshot(str(shots / "artifact-cells.png"))
        browser.get(f"{base}/runs/flow-run/{bad['id']}")
        wait_for_text(browser, "ecs.bucket")
        browser.save_screenshot(str(shots / "run-bad-settings.png"))
    print(f"screenshots: {shots}")
