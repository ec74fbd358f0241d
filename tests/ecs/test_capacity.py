"""The stack read before a run (flows/ecs/capacity.py): its market checked, its region and zones priced.

    python -m pytest -q tests/test_ecs_capacity.py

Against a moto server over HTTP (ECS, Auto Scaling, EC2) provisioned like the stack, with the
Price List API and per-zone spot prices of tests/price_emulator.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows import grid as cli
from flows.cost.prices import CostError
from flows.ecs.capacity import StackUnreadable, price_stack
from flows.ecs.settings import EcsSettings
from tests.ecs_emulator import REGION, StandIn
from tests.price_emulator import PriceList, spot_market

ROOT = Path(__file__).resolve().parents[2]
DEMO_SPEC = str(ROOT / "grid-search" / "demo.yaml")


def settings(aws: StandIn, **override) -> EcsSettings:
    return EcsSettings.parse(aws.settings(**override))


@pytest.fixture
def price_list(monkeypatch):
    """On-demand prices by region (made-up figures, unlike the table's, so a test sees which it got)."""
    with PriceList({("g5.xlarge", "us-east-1"): 1.111, ("g5.xlarge", "eu-west-1"): 1.258}) as pl:
        monkeypatch.setenv("AWS_ENDPOINT_URL_PRICING", pl.endpoint)
        yield pl


# ----------------------------------------------------------------------------- the market


def test_spot_pricing_on_an_on_demand_group_is_refused(aws):
    with pytest.raises(ValueError, match=r"launches 100% on-demand \(base 0\) but the run is priced at spot"):
        price_stack(settings(aws), "g5.xlarge", spot=True, capped=True)
    stack = price_stack(settings(aws), "g5.xlarge", spot=False, capped=True)
    assert stack.capacity.zones == (f"{REGION}a",) and stack.capacity.on_demand_percent == 100


def test_on_demand_pricing_on_a_spot_group_is_refused(aws):
    aws.spot_only()
    with pytest.raises(ValueError, match="100% Spot but the run is priced on-demand"):
        price_stack(settings(aws), "g5.xlarge", spot=False, capped=True)
    assert price_stack(settings(aws), "g5.xlarge", spot=True, capped=True).capacity.on_demand_percent == 0


def test_no_such_capacity_provider_and_no_credentials_say_what_to_fix(aws, monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="ecs.capacity_provider nope: .*CapacityProviderName output"):
        price_stack(settings(aws, capacity_provider="nope"), "g5.xlarge", spot=False, capped=True)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StackUnreadable, match="no AWS credentials"):
        price_stack(settings(aws), "g5.xlarge", spot=False, capped=True)


# ----------------------------------------------------------------------------- the region and its zones


def test_spot_is_priced_at_the_dearest_of_the_stacks_own_zones(aws, monkeypatch, price_list):
    zones = [f"{REGION}a", f"{REGION}b"]
    aws.spot_only(zones)
    asked = spot_market(monkeypatch, {("g5.xlarge", f"{REGION}a"): 0.41, ("g5.xlarge", f"{REGION}b"): 0.47,
                                      ("g5.xlarge", f"{REGION}c"): 0.95})  # c: not a zone of the group
    stack = price_stack(settings(aws), "g5.xlarge", spot=True, capped=True)
    p = stack.prices["g5.xlarge"]
    assert (p.spot_low, p.spot_high, p.on_demand) == (0.41, 0.47, 1.111)
    assert p.region == REGION and p.zones == tuple(zones) and p.per_gpu(spot=True) == 0.47
    assert asked == [{"region": REGION, "types": ["g5.xlarge"], "zones": zones}]
    (request,) = price_list.requests
    assert request["target"] == "AWSPriceListService.GetProducts"
    assert {"Type": "TERM_MATCH", "Field": "regionCode", "Value": REGION} in request["Filters"]
    assert stack.notes[-1] == f"g5.xlarge priced in {REGION} ({', '.join(zones)}): spot $0.410-0.470/h, " \
                              "dearest zone charged"


def test_a_zone_without_spot_prices_is_said_and_none_at_all_prices_spot_at_on_demand(aws, monkeypatch, price_list):
    zones = [f"{REGION}a", f"{REGION}b"]
    aws.spot_only(zones)
    market = {("g5.xlarge", f"{REGION}a"): 0.41}
    spot_market(monkeypatch, market)
    stack = price_stack(settings(aws), "g5.xlarge", spot=True, capped=True)
    assert stack.prices["g5.xlarge"].spot_high == 0.41
    assert f"no spot price for g5.xlarge in {REGION}b" in stack.notes[1]
    market.clear()
    stack = price_stack(settings(aws), "g5.xlarge", spot=True, capped=True)
    assert stack.prices["g5.xlarge"].spot_high == 1.111 and "spot priced at on-demand" in stack.notes[1]


def another_region_stack(aws: StandIn, region: str) -> StandIn:
    """The stack's capacity provider and group, deployed in ``region`` (moto keeps regions apart)."""
    import boto3

    there = StandIn.named(aws.endpoint, f"{aws.cluster}-{region}")
    clients = {s: boto3.client(s, region_name=region, endpoint_url=aws.endpoint) for s in ("ec2", "autoscaling", "ecs")}
    ami = clients["ec2"].describe_images()["Images"][0]["ImageId"]
    clients["ec2"].create_launch_template(LaunchTemplateName=there.capacity_provider,
                                          LaunchTemplateData={"ImageId": ami, "InstanceType": "g5.xlarge"})
    clients["autoscaling"].create_auto_scaling_group(
        AutoScalingGroupName=there.capacity_provider, LaunchTemplate={"LaunchTemplateName": there.capacity_provider},
        MinSize=0, MaxSize=1, DesiredCapacity=0, AvailabilityZones=[f"{region}a", f"{region}b"])
    group = clients["autoscaling"].describe_auto_scaling_groups(
        AutoScalingGroupNames=[there.capacity_provider])["AutoScalingGroups"][0]
    clients["ecs"].create_capacity_provider(name=there.capacity_provider, autoScalingGroupProvider={
        "autoScalingGroupArn": group["AutoScalingGroupARN"], "managedTerminationProtection": "DISABLED"})
    return there


def test_prices_come_from_the_stacks_region(aws, monkeypatch, price_list):
    there = another_region_stack(aws, "eu-west-1")
    spot_market(monkeypatch, {("g5.xlarge", "eu-west-1a"): 0.52, ("g5.xlarge", "eu-west-1b"): 0.55,
                              ("g5.xlarge", f"{REGION}a"): 0.41})
    stack = price_stack(settings(there, region="eu-west-1"), "g5.xlarge", spot=False, capped=True)
    p = stack.prices["g5.xlarge"]
    assert (p.on_demand, p.spot_high, p.region, p.zones) == (1.258, 0.55, "eu-west-1", ("eu-west-1a", "eu-west-1b"))
    assert stack.notes[-1] == "g5.xlarge priced in eu-west-1 (eu-west-1a, eu-west-1b): on-demand $1.258/h"


def test_a_region_the_table_lacks_cannot_run_under_a_cap_without_its_prices(aws, monkeypatch):
    there = another_region_stack(aws, "eu-west-1")  # and the Price List API out of reach (the fixture's)
    with pytest.raises(CostError, match=r"g5.xlarge cannot be priced in eu-west-1 \(price refresh failed .*"
                                        r"so the cap could not hold; allow pricing:GetProducts"):
        price_stack(settings(there, region="eu-west-1"), "g5.xlarge", spot=False, capped=True)
    stack = price_stack(settings(there, region="eu-west-1"), "g5.xlarge", spot=False, capped=False)
    assert stack.prices["g5.xlarge"].region == "us-east-1"
    assert stack.notes[0].endswith("using the us-east-1 price table of 2026-06 (for eu-west-1, whose prices may "
                                   "be higher)")


def test_the_run_must_be_priced_at_the_dearest_type_the_group_may_launch(aws, monkeypatch):
    """The stack lists up to three types (InstanceType1-3); each instance bills at its own type's rate."""
    aws.client("autoscaling").update_auto_scaling_group(
        AutoScalingGroupName=aws.capacity_provider, MixedInstancesPolicy={
            "LaunchTemplate": {"LaunchTemplateSpecification": {"LaunchTemplateName": aws.capacity_provider},
                               "Overrides": [{"InstanceType": "g5.xlarge"}, {"InstanceType": "g6e.xlarge"},
                                             {"InstanceType": "x9.huge"}]},
            "InstancesDistribution": {"OnDemandBaseCapacity": 0, "OnDemandPercentageAboveBaseCapacity": 100}})
    with PriceList({("g5.xlarge", REGION): 1.111, ("g6e.xlarge", REGION): 2.222}) as pl:
        monkeypatch.setenv("AWS_ENDPOINT_URL_PRICING", pl.endpoint)
        with pytest.raises(CostError, match=r"may launch g6e.xlarge at \$2.222/GPU-h, dearer than --instance-type "
                                            r"g5.xlarge \(\$1.111\); .* run with --instance-type g6e.xlarge"):
            price_stack(settings(aws), "g5.xlarge", spot=False, capped=True)
        stack = price_stack(settings(aws), "g6e.xlarge", spot=False, capped=True)
    assert stack.capacity.instance_types == ("g5.xlarge", "g6e.xlarge", "x9.huge")
    assert {t: p.on_demand for t, p in stack.prices.items() if p.region == REGION and p.zones} == {
        "g5.xlarge": 1.111, "g6e.xlarge": 2.222}
    assert any("x9.huge, which the price table lacks" in n for n in stack.notes)


# ----------------------------------------------------------------------------- the dry run and the run agree


def stack_flags(aws: StandIn) -> list[str]:
    return ["--backend", "ecs", *(x for k in ("cluster", "capacity_provider", "task_definition", "bucket")
                                  for x in ("--ecs", f"{k}={aws.settings()[k]}"))]


def test_the_dry_run_prices_the_stack_as_the_run_does(aws, monkeypatch, price_list, capsys, tmp_path, prefect_api):
    """Both read the stack's prices ($1.111/h here, not the table's $1.006) and refuse the same line."""
    from prefect.settings import PREFECT_API_URL

    flags = ["--max-cost", "0.05", "--max-parallel", "1", "--out", str(tmp_path / "demo"), *stack_flags(aws)]
    assert cli.main([DEMO_SPEC, "--dry-run", "--json", *flags]) == 3
    doc = json.loads(capsys.readouterr().out)
    assert doc["estimate"]["usd_per_gpu_hour"] == 1.111 and doc["estimate"]["price_where"] == f"{REGION} ({REGION}a)"
    assert any(n.endswith("on-demand $1.111/h") for n in doc["notes"])
    # The run, as a user starts it (a process of its own, on this session's Prefect API): the
    # flow's pre-flight refuses with the dry run's dollars.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": PREFECT_API_URL.value()}
    run = subprocess.run([sys.executable, "-m", "flows.grid", DEMO_SPEC, *flags], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 3, run.stderr[-2000:]
    assert f"estimated ${doc['estimate']['usd']:.2f} " in run.stderr and "exceeds the cap $0.05" in run.stderr
    usd = doc["estimate"]["usd"]
    assert f"{usd:.2f}" != f"{usd * 1.006 / 1.111:.2f}", "the table's price would give other dollars"
    assert not (tmp_path / "demo" / "cells").exists()

    # A spot run on this on-demand group: the dry run and the run refuse it with the same line.
    dry = cli.main([DEMO_SPEC, "--dry-run", "--spot", *flags]), capsys.readouterr().err
    real = cli.main([DEMO_SPEC, "--spot", *flags]), capsys.readouterr().err
    assert dry == real and dry[0] == 2 and "but the run is priced at spot" in dry[1] and "Traceback" not in dry[1]
    assert not (tmp_path / "demo" / "cells").exists()


def test_the_flow_refuses_a_market_mismatch_before_it_writes_or_launches(aws, tmp_path, prefect_api):
    from flows import flow as grid_mod

    spec = tmp_path / "demo.yaml"
    spec.write_text(open(DEMO_SPEC).read())
    state = grid_mod.grid_search(spec=str(spec), backend="ecs", spot=True, ecs=aws.settings(), return_state=True)
    assert state.is_failed() and "launches 100% on-demand (base 0) but the run is priced at spot" in state.message
    assert not (tmp_path / "demo").exists()
    assert not aws.client("ecs").list_tasks(cluster=aws.cluster)["taskArns"]
