"""``python -m flows.grid SPEC --dry-run``: output, exit codes, JSON shape, reads only, light imports."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from flows import grid as cli
from flows.cost import cap as plan
from flows.spec.cells import expand
from flows.spec.parse import load_spec
from tests.conftest import write_grid_spec

ROOT = Path(__file__).resolve().parent.parent
BENSON = ROOT / "grid-search/benson2025.yaml"
DEMO = ROOT / "grid-search/demo.yaml"
# A cloud run's flags name a stack: the dry run, like the run, reads its market and prices (in moto
# here: on-demand, us-east-1, priced from the table since moto has no Price List API).
def ecs_flags(aws) -> list[str]:
    return ["--backend", "ecs", *(x for k in ("cluster", "capacity_provider", "task_definition", "bucket")
                                  for x in ("--ecs", f"{k}={aws.settings()[k]}")), "--ecs", "region=us-east-1"]


@pytest.fixture
def ECS(aws) -> list[str]:  # noqa: N802 - reads as the flags it stands for
    return ecs_flags(aws)


@pytest.fixture
def SPOT_ECS(aws) -> list[str]:  # noqa: N802
    """The same stack's group launching Spot only (OnDemandPercentageAboveBaseCapacity 0)."""
    aws.spot_only()
    return ecs_flags(aws)


@pytest.fixture(autouse=True)
def no_local_gpus(monkeypatch):
    """This machine as a CPU-only one, whatever it has (the local backend prices its GPUs)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def run(capsys, *args: str) -> tuple[int, str, str]:
    argv = [str(a) for a in args]
    if "--out" not in argv and Path(argv[0]).parent == ROOT / "grid-search":
        # A shipped spec writes to grid-search/<name>/, which `make run` fills: point it at a
        # folder that does not exist, so the dry run sees a fresh grid (and nothing is created).
        argv += ["--out", str(Path(tempfile.gettempdir()) / f"autolabel-cli-{uuid.uuid4().hex}" / "grid")]
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def demo(tmp_path) -> Path:
    """A private copy of the demo spec, so its output folder is private too."""
    return Path(shutil.copy(DEMO, tmp_path / "demo.yaml"))


def test_dry_run_reports_factors_cost_and_wall_clock(capsys, ECS):
    code, out, err = run(capsys, BENSON, "--dry-run", *ECS)
    assert code == 0 and err == ""
    assert out.startswith("benson2025: 1800 cells from ")
    assert "  lr          5: 0.00167, 0.0025, 0.00375, 0.00562, 0.00844" in out
    assert "plan: 3 rounds of 10/10/10 epochs, until 2; lr x (1, 0.666667, 0.333333); bce_weight x (1, 0.5, 0)" in out
    assert "(0 of 1800 cells complete)" in out
    assert "estimate for 1800 cells to train on g5.xlarge (A10G, $1.006/GPU-h on-demand, $0.450 spot" in out
    for key in ("GPU-hours", "on-demand,", "spot", "wall-clock", "at --max-parallel 8", "cap: none set",
                "(this run: on-demand)", "(--backend ecs)"):
        assert key in out
    assert "+ instance start/idle 2.7)" in out  # 8 lanes x (300 s start + 900 s idle)


def test_a_local_dry_run_prices_what_the_local_ledger_charges(capsys, monkeypatch):
    """The issue's case: the demo at --max-cost 0.5 on a CPU. The run charges $0, so its dry run does too."""
    code, out, _ = run(capsys, DEMO, "--dry-run", "--max-cost", "0.5")
    assert code == 0 and "cap: fits, $0.00 of $0.50" in out
    assert "$0.00 this run (local, $0.000/h)" in out and "at --max-parallel 2 (--backend local)" in out
    assert "instance start/idle 0.0" in out and "note: a local run without GPUs is charged $0" in out
    code, out, _ = run(capsys, DEMO, "--dry-run", "--max-cost", "0.5", "--local-usd-per-hour", "3600")
    assert code == 3 and "cap: OVER, $" in out and "this run (local, $3600.000/h)" in out
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # a GPU here: billed at the instance type's rate
    code, out, _ = run(capsys, DEMO, "--dry-run", "--instance-type", "g6e.xlarge")
    assert code == 0 and "this run (local, $1.861/h)" in out and "instance start/idle 0.0" in out
    assert "note: a local run without GPUs" not in out


def test_the_dry_run_refuses_what_the_run_refuses(capsys, ECS):
    for args in ([DEMO, "--backend", "ecs"], [DEMO, "--backend", "ecs", "--ecs", "cluster=c"],
                 [DEMO, *ECS, "--ecs", "bucket=Not_A_Bucket"], [DEMO, "--ecs", "cluster=c"],
                 [DEMO, *ECS, "--ecs", "colour=blue"], [DEMO, "--instance-type", "m5.large"]):
        dry = run(capsys, *args, "--dry-run")
        real = run(capsys, *args)
        assert dry[0] == real[0] == 2 and real[1] == "", args
        assert dry[2] == real[2] and "Traceback" not in dry[2], args
        # Bad ECS settings still get the price first: a lab prices a cloud run before its stack exists.
        ecs_settings_problem = "--backend" in args and "ecs" in args
        assert ("estimate for 12 cells" in dry[1]) == ecs_settings_problem, args


def test_over_the_cap_exits_3_and_says_how_many_fit(capsys, ECS):
    code, out, _ = run(capsys, BENSON, "--dry-run", "--max-cost", "20", *ECS)
    assert code == 3
    line = next(x for x in out.splitlines() if x.startswith("cap: OVER"))
    assert "cells fit with every level kept (--on-cap subset runs them)" in line
    fit = int(line.split("; ")[1].split(" of ")[0])
    assert 0 < fit < 1800
    code, out, _ = run(capsys, BENSON, "--dry-run", "--max-cost", "20", "--on-cap", "subset", *ECS)
    assert code == 0 and f"{fit} of 1800 cells fit" in out and "this run (--on-cap subset) trains them" in out
    code, out, _ = run(capsys, BENSON, "--dry-run", "--max-cost", "1", *ECS)
    assert code == 3 and "even the 5 cells that cover every level cost" in out
    code, out, _ = run(capsys, BENSON, "--dry-run", "--max-cost", "1", "--on-cap", "subset", *ECS)
    assert code == 3


def test_within_the_cap_exits_0(capsys, SPOT_ECS):
    code, out, _ = run(capsys, BENSON, "--dry-run", "--max-cost", "1000", "--spot", "--instance-type", "g6e.xlarge",
                       *SPOT_ECS)
    assert code == 0 and "cap: fits, $" in out and "(this run: spot)" in out and "on g6e.xlarge (L40S" in out


def test_json_document(capsys, ECS):
    code, out, _ = run(capsys, BENSON, "--dry-run", "--json", "--max-cost", "20", *ECS)
    doc = json.loads(out)
    assert code == 3 and doc["exit_code"] == 3
    assert doc["name"] == "benson2025" and doc["cells_total"] == 1800 and doc["cells_to_train"] == 1800
    assert doc["factors"]["gamma"] == [0.8, 0.85, 0.9, 0.95, 1.0]
    est = doc["estimate"]
    for key in ("gpu_hours", "usd_on_demand", "usd_spot", "wall_hours", "instance_type", "max_parallel", "sources"):
        assert key in est
    assert est["usd_on_demand"] > 20 and doc["cap"]["fits"] is False and 0 < doc["cap"]["cells_within"] < 1800
    assert est["backend"] == "ecs" and est["usd"] == est["usd_on_demand"] and doc["cap"]["verdict"].startswith("OVER")
    assert len(doc["cells"]) == 1800 and len({c["id"] for c in doc["cells"]}) == 1800
    cell = doc["cells"][0]
    assert set(cell) == {"id", "label", "hyper", "options", "plan", "complete"}
    assert cell["options"]["until"] == 2 and len(cell["plan"]) == 3 and cell["complete"] is False


def test_counts_complete_cells_and_prices_only_the_rest(capsys, demo):
    cells = expand(load_spec(demo))
    for c in cells[:2]:
        d = demo.parent / "demo" / "cells" / c.id
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"status": "complete"}))
    (demo.parent / "demo" / "ledger.jsonl").write_text(json.dumps({"event": "charge", "usd": 0.5, "cells": []}) + "\n")
    code, out, _ = run(capsys, demo, "--dry-run")
    assert code == 0
    assert "(2 of 12 cells complete, $0.50 spent so far)" in out and "estimate for 10 cells to train" in out
    code, out, _ = run(capsys, demo, "--dry-run", "--force")
    assert "estimate for 12 cells to train" in out


def test_dry_run_writes_nothing(capsys, demo, tmp_path):
    before = sorted(p for p in tmp_path.rglob("*"))
    assert run(capsys, demo, "--dry-run")[0] == 0
    assert run(capsys, demo, "--dry-run", "--json", "--out", tmp_path / "out")[0] == 0
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_invalid_spec_exits_2_without_traceback(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nhyper:\n  lr: [0.001, -1]\n  gamma: []\n")
    code, out, err = run(capsys, bad, "--dry-run")
    assert code == 2 and out == ""
    assert err.splitlines() == [
        f"{bad}: hyper.gamma: empty list; give at least one level",
        f"{bad}: hyper.lr[1]: Input should be greater than 0 (got -1.0)",
    ]
    # The real run validates before importing Prefect, and fails the same way.
    assert run(capsys, bad)[0] == 2


@pytest.mark.parametrize(
    "args,message",
    [
        (["missing.yaml", "--dry-run"], "missing.yaml: not found; give the path of a grid spec (YAML or JSON)"),
        ([DEMO, "--dry-run", "--instance-type", "m5.large"], "unknown instance type 'm5.large'; priced: g4dn.xlarge"),
        ([DEMO, "--instance-type", "m5.large"], "unknown instance type 'm5.large'"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, args, message):
    code, out, err = run(capsys, *args)
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and message in err


def test_bad_flags_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([str(DEMO), "--dry-run", "--max-parallel", "0"])
    assert e.value.code == 2 and "must be a whole number >= 1" in capsys.readouterr().err


def test_a_real_run_hands_every_option_to_run_grid(monkeypatch, demo, aws, SPOT_ECS):
    """The contract with run_grid (which runs the flow), recorded instead of run."""
    calls = []
    monkeypatch.setattr(cli, "run_grid", lambda spec_path, **kw: calls.append((spec_path, kw)) or 5)
    code = cli.main([str(demo), "--max-cost", "12.5", "--on-cap", "subset", "--spot",
                     "--cells-per-gpu", "4", "--out", "/tmp/x", "--force", "--instance-type", "g6e.xlarge", *SPOT_ECS])
    assert code == 5
    ecs = {k: aws.settings()[k] for k in ("cluster", "capacity_provider", "task_definition", "bucket")}
    ecs["region"] = "us-east-1"
    assert calls == [(demo, {"out_dir": Path("/tmp/x"), "backend": "ecs", "max_parallel": 8, "max_cost_usd": 12.5,
                             "instance_type": "g6e.xlarge", "on_cap": "subset", "cells_per_gpu": 4, "spot": True,
                             "force": True, "ecs": ecs})]
    cli.main([str(demo)])
    assert calls[-1][1]["backend"] == "local" and calls[-1][1]["max_parallel"] == plan.LOCAL_MAX_PARALLEL
    cli.main([str(demo), "--local-usd-per-hour", "0.5"])
    assert calls[-1][1]["local_usd_per_hour"] == 0.5


@pytest.mark.parametrize("backend", ["local", "ecs"])
def test_module_entry_point_imports_neither_torch_nor_prefect(backend, request):
    """``python -m flows.grid`` as a user types it, with Python's import log; on ECS it reads the
    stack (boto3), as the run would."""
    flags = request.getfixturevalue("ECS") if backend == "ecs" else []
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "flows.grid", str(BENSON), "--dry-run", "--max-cost", "1000",
         *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "benson2025: 1800 cells" in proc.stdout
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    assert "pydantic" in imported and "yaml" in imported  # the log is real
    heavy = imported & {"torch", "prefect", "numpy", *(["boto3"] if backend == "local" else [])}
    assert not heavy, sorted(heavy)


def test_ecs_backend_without_its_settings_is_refused_before_anything_runs(demo, capsys):
    code = cli.main([str(demo), "--backend", "ecs", "--ecs", "cluster=c"])
    assert code == 2
    assert not (demo.parent / "demo").exists()
    err = capsys.readouterr().err
    assert "ecs.bucket" in err and "ecs.task_definition" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- what training would refuse, refused first


@pytest.mark.parametrize("flag", ["--json", "--refresh-prices"])
def test_a_dry_run_flag_without_dry_run_starts_nothing(capsys, demo, flag, monkeypatch):
    monkeypatch.setattr(cli, "run_grid", lambda *a, **k: pytest.fail("a real run started"))
    code, out, err = run(capsys, str(demo), flag)
    assert code == 2 and err.strip() == f"{flag}: applies only to --dry-run; add --dry-run (without it this command " \
                                       "trains and pays)"
    assert not (demo.parent / "demo").exists()


def bad_spec(tmp_path: Path, **static) -> Path:
    from tests.conftest import write_grid_spec

    return write_grid_spec(tmp_path, "bad", {"lr": [0.002]}, static=static)


@pytest.mark.parametrize("case, static, words", [
    ("one-training-subject", {"dataset": {"kind": "synthetic", "subjects": 4, "rows": 32, "cols": 64},
                              "partition": {"train": ["sub000"], "validation": ["sub001"]}},
     "partition: the training set has 1 subject"),
    ("unknown-ids", {"partition": {"train": ["sub000", "nobody"], "validation": ["sub001"]}},
     "partition: unknown subject id(s) ['nobody']"),
    ("image-size", {"image_size": [40, 64]}, "image_size: rows and cols must be positive multiples of 32"),
    ("batch-of-one", {"batch_size": 1, "dataset": {"kind": "synthetic", "subjects": 8, "rows": 32, "cols": 32}},
     "batch_size: a batch of 1 image of 32x32 leaves BatchNorm one value per channel"),
    ("no-manifest", {"dataset": {"kind": "path", "path": "/nonexistent/ds"}}, "manifest.json: not found"),
])
def test_inputs_training_would_refuse_are_one_line_exit_2_in_dry_run_and_run(capsys, tmp_path, case, static, words,
                                                                              monkeypatch):
    monkeypatch.setattr(cli, "run_grid", lambda *a, **k: pytest.fail("a real run started"))
    spec = bad_spec(tmp_path, **static)
    dry, real = run(capsys, str(spec), "--dry-run"), run(capsys, str(spec))
    assert dry[0] == real[0] == 2 and dry[2] == real[2], (dry, real)
    (line,) = real[2].strip().splitlines()
    assert words in line and "Traceback" not in line, line
    assert not (tmp_path / "bad").exists()


def test_an_out_folder_that_is_a_file_or_unwritable_is_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "run_grid", lambda *a, **k: pytest.fail("a real run started"))
    spec = bad_spec(tmp_path)
    (tmp_path / "a-file").write_text("x")
    code, _, err = run(capsys, str(spec), "--out", str(tmp_path / "a-file" / "grid"))
    assert code == 2 and "is a file, not a folder" in err and len(err.strip().splitlines()) == 1
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        code, _, err = run(capsys, str(spec), "--out", str(locked / "grid"))
        assert code == 2 and "is not writable" in err


@pytest.mark.parametrize("name", ["metrics.json", "options.json", "checkpoint.pt"])
def test_a_cell_file_that_is_not_a_regular_file_is_one_line_exit_2(capsys, tmp_path, monkeypatch, name):
    monkeypatch.setattr(cli, "run_grid", lambda *a, **k: pytest.fail("a real run started"))
    spec = bad_spec(tmp_path)
    (cell,) = expand(load_spec(spec))
    (tmp_path / "bad" / "cells" / cell.id / name).mkdir(parents=True)  # a folder where a file belongs
    dry, real = run(capsys, str(spec), "--dry-run"), run(capsys, str(spec))
    assert dry[0] == real[0] == 2 and dry[2] == real[2], (dry, real)
    (line,) = real[2].strip().splitlines()
    assert f"{cell.id}/{name}: not a regular file" in line and "Traceback" not in line, line


def test_a_malformed_ledger_is_one_line_exit_2_on_a_real_run(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "run_grid", lambda *a, **k: pytest.fail("a real run started"))
    spec = bad_spec(tmp_path)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "ledger.jsonl").write_text('{"event": "charge", "usd": "lots"}\nnot json\n')
    code, _, err = run(capsys, str(spec))
    assert code == 2 and "ledger.jsonl" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_refresh_prices_before_the_stack_exists_names_the_region_it_could_not_price(capsys, monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code, out, err = run(capsys, DEMO, "--dry-run", "--backend", "ecs", "--ecs", "region=eu-west-1", "--refresh-prices")
    assert code == 2 and "ecs.cluster: required" in err  # no stack yet: priced, then refused
    assert "note: no AWS credentials; using the us-east-1 price table of 2026-06 (for eu-west-1, whose prices " \
           "may be higher)" in out and "prices us-east-1 2026-06" in out


# ----------------------------------------------------------------------------- the run's typed result -> exit code


@pytest.mark.parametrize("fields, code", [
    ({}, 0),
    ({"incomplete": ["a"]}, 4),
    ({"incomplete": ["a"], "skipped_by_cap": 1}, 3),
    ({"refused": "cap"}, 3),
    ({"refused": "input"}, 2),
    ({"busy": True}, 75),
    ({"stopped_by": signal.SIGTERM, "incomplete": ["a"], "skipped_by_cap": 1}, 143),
    ({"stopped_by": signal.SIGINT}, 130),
    ({"stopped_by": signal.SIGHUP}, 129),
])
def test_the_exit_code_is_read_from_the_typed_result_never_its_message(fields, code):
    from flows.flow import RunResult

    # A message that would mislead any parser: the code comes from the fields alone.
    result = RunResult(grid_dir="g", message="stopped by SIGTERM (exit 143): cost cap; busy: ", **fields)
    assert cli.exit_code(result) == code


def test_a_failed_flows_result_travels_typed_in_its_state(prefect_api, tmp_path):
    """A run refused inside the flow (its own plan found a problem) ends Failed, and the command
    line reads the RunResult from the state, not from its message."""
    from flows.flow import RunFailed, RunResult, grid_search

    spec = write_grid_spec(tmp_path, "g", {"lr": [0.002]},
                           static={"partition": {"train": ["sub000", "nobody"], "validation": ["sub001"]}})
    state = grid_search(spec=str(spec), return_state=True)
    assert state.is_failed()
    data = state.result(raise_on_failure=False)
    assert isinstance(data, RunFailed) and isinstance(data.result, RunResult)
    assert data.result.refused == "input" and "nobody" in data.result.message
    assert cli.run_grid(spec) == 2


def test_a_reader_that_stops_early_is_no_error(tmp_path):
    """``python -m flows.grid SPEC --dry-run --json | head``: no BrokenPipeError traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "flows.grid", str(BENSON), "--dry-run", "--json", "--out",
                             str(tmp_path / "grid")], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"{"
    proc.stdout.close()  # what head does after its lines
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err
