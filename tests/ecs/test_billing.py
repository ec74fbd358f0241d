"""Instance billing (flows/ecs/billing.py) and the lane holds of the in-run cap (flows/cost/estimate.py): pure."""

from __future__ import annotations

import datetime as dt

import pytest

from flows.cost import cap as plan
from flows.cost import estimate as cost
from flows.cost.estimate import IDLE_TAIL_S, INSTANCE_START_S
from flows.cost.prices import Price, price_of
from flows.ecs.billing import (
    InstanceUse,
    bill_instances,
    instance_span,
    termination_time,
)

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.timezone.utc)


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def test_a_partly_filled_multi_gpu_instance_is_reserved_and_estimated_whole():
    p4d = plan.make_pricing("ecs", "p4d.24xlarge", max_parallel=3)
    assert cost.billed_lanes(p4d, packs=10) == 8
    assert cost.lane_usd(p4d, 0, 10) == pytest.approx(21.958 * (INSTANCE_START_S + IDLE_TAIL_S) / 3600)
    assert cost.lane_usd(p4d, 1, 10) == cost.lane_usd(p4d, 2, 10) == 0.0, "the same instance"
    g5 = plan.make_pricing("ecs", "g5.xlarge", max_parallel=3)
    assert [cost.lane_usd(g5, i, 10) > 0 for i in range(4)] == [True, True, True, False]
    assert cost.lane_usd(plan.make_pricing("local", "g5.xlarge"), 0, 10) == 0.0


def test_spot_is_priced_at_the_dearest_zone():
    assert plan.make_pricing("ecs", "p5.48xlarge", spot=True).usd_per_gpu_hour == pytest.approx(25.8 / 8)


def test_termination_time_is_read_from_ec2s_own_record():
    gone = {"State": {"Name": "terminated"}, "StateTransitionReason": "Service initiated (2026-12-01 12:34:56 GMT)"}
    assert termination_time(gone) == dt.datetime(2026, 12, 1, 12, 34, 56, tzinfo=dt.timezone.utc)
    assert termination_time({"State": {"Name": "running"}, "StateTransitionReason": ""}) is None


def test_instance_span_from_launch_or_first_task_to_termination_or_modelled_tail():
    use = InstanceUse(at(10), at(40), tasks_usd=0.5)
    launched = {"LaunchTime": at(5), "State": {"Name": "terminated"},
                "StateTransitionReason": f"User initiated ({at(58):%Y-%m-%d %H:%M:%S} GMT)"}
    assert instance_span(use, launched, run_start=at(0)) == (at(5), at(58), False, "launch to termination")
    warm = {"LaunchTime": at(-60), "State": {"Name": "running"}}
    begin, end, estimated, how = instance_span(use, warm, run_start=at(0))
    assert (begin, end, estimated) == (at(0), at(40) + dt.timedelta(seconds=IDLE_TAIL_S), True)
    begin, end, estimated, how = instance_span(use, None, run_start=at(0))
    assert begin == at(10) - dt.timedelta(seconds=INSTANCE_START_S) and estimated and "modelled" in how


def test_bills_price_the_whole_instance_type_ec2_reports():
    use = {"arn:ci/1": InstanceUse(at(10), at(70), tasks_usd=2.0)}
    inst = {"arn:ci/1": {"InstanceId": "i-1", "InstanceType": "p4d.24xlarge", "LaunchTime": at(0),
                         "State": {"Name": "terminated"},
                         "StateTransitionReason": f"User initiated ({at(90):%Y-%m-%d %H:%M:%S} GMT)"}}
    (bill,) = bill_instances(use, inst, at(0), spot=False, price=price_of("g5.xlarge"))
    assert bill["instance_id"] == "i-1" and bill["seconds"] == 5400
    assert bill["billed_usd"] == pytest.approx(1.5 * 21.958) and not bill["estimated"]
    # The run's own prices, read for the stack's region, bill each type the group launched; a
    # type they lack is billed as the run's own.
    run = {"g5.xlarge": Price("g5.xlarge", "A10G", 1, 1.258, 0.5, 0.6, "2026-12-02", "test", "eu-west-1"),
           "p4d.24xlarge": Price("p4d.24xlarge", "A100", 8, 27.0, 9.0, 10.0, "2026-12-02", "test", "eu-west-1")}
    (bill,) = bill_instances(use, inst, at(0), spot=True, price=run["g5.xlarge"], prices=run)
    assert bill["usd_per_hour"] == 10.0 and bill["prices"] == "test, eu-west-1, 2026-12-02"
    inst["arn:ci/1"]["InstanceType"] = "g4dn.xlarge"
    (bill,) = bill_instances(use, inst, at(0), spot=False, price=run["g5.xlarge"], prices=run)
    assert bill["instance_type"] == "g4dn.xlarge" and bill["usd_per_hour"] == 1.258
