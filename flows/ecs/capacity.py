"""The stack's GPU capacity, read before a run: its market, its zones, and what an hour there costs.

    python -m flows.grid grid-search/demo.yaml --dry-run --spot $ECS   # reads the stack as the run does

The dry run and the flow call the same :func:`price_stack` before anything is priced, written or
launched. It reads the capacity provider's Auto Scaling group (read-only calls), refuses a run
priced at spot on a group that launches on-demand (or the reverse: either way the ledger would
not be the bill), and prices the instance type in the group's region at the dearest of the
group's zones. The dated table (flows/cost/prices.py) holds us-east-1's prices only: where AWS's
price APIs cannot be read, a run elsewhere under a cap is refused, since the cap could not hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flows.cost.prices import (
    PRICES,
    TABLE_REGION,
    CostError,
    Price,
    price_of,
    refresh_prices,
)
from flows.ecs.aws import aws_session, client_config
from flows.ecs.rules import classify_error
from flows.ecs.settings import EcsSettings


class StackUnreadable(ValueError):
    """No credentials, or AWS out of reach: nothing about the stack can be read from here."""


@dataclass(frozen=True)
class Capacity:
    """The Auto Scaling group behind the capacity provider, as the cost model needs it."""

    capacity_provider: str
    group: str
    region: str
    zones: tuple[str, ...]  # where the group may launch: the spot range spans these
    on_demand_base: int
    on_demand_percent: int  # above the base; 100 without a MixedInstancesPolicy
    instance_types: tuple[str, ...] = ()  # the policy's overrides (the stack's InstanceType1-3); () unknown

    @classmethod
    def of(cls, capacity_provider: str, group: dict, region: str) -> Capacity:
        mixed = group.get("MixedInstancesPolicy")
        dist = (mixed or {}).get("InstancesDistribution") or {}
        overrides = ((mixed or {}).get("LaunchTemplate") or {}).get("Overrides") or []
        return cls(capacity_provider, group["AutoScalingGroupName"], region,
                   tuple(sorted(group.get("AvailabilityZones", []))), int(dist.get("OnDemandBaseCapacity", 0)),
                   int(dist.get("OnDemandPercentageAboveBaseCapacity", 100)) if mixed else 100,
                   tuple(dict.fromkeys(o["InstanceType"] for o in overrides if o.get("InstanceType"))))

    def check_market(self, spot: bool) -> None:
        """Refuse a run priced at spot on a group that launches on-demand, or the reverse.

        A group at 100% on-demand bills g5.xlarge at $1.006/h; priced at spot the ledger would
        read about 57% low and the cap would let the bill run past it.
        """
        where = f"ecs.capacity_provider {self.capacity_provider} (Auto Scaling group {self.group})"
        if spot and (self.on_demand_percent > 0 or self.on_demand_base > 0):
            raise ValueError(
                f"{where} launches {self.on_demand_percent}% on-demand (base {self.on_demand_base}) but the run "
                "is priced at spot: the ledger would read low and the cap would not hold; run without --spot, or "
                "deploy with OnDemandPercentageAboveBaseCapacity=0")
        if not spot and self.on_demand_percent < 100:
            raise ValueError(
                f"{where} launches {100 - self.on_demand_percent}% Spot but the run is priced on-demand; run with "
                "--spot (then deploy with OnDemandPercentageAboveBaseCapacity=0), or deploy with 100")


def read_capacity(ecs: Any, autoscaling: Any, capacity_provider: str, region: str) -> Capacity:
    """The capacity provider's group (StackUnreadable: no credentials or no AWS; ValueError: what to fix)."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    try:
        cps = ecs.describe_capacity_providers(capacityProviders=[capacity_provider])["capacityProviders"]
        arn = cps[0]["autoScalingGroupProvider"]["autoScalingGroupArn"] if cps else ""
        name = arn.rsplit("autoScalingGroupName/", 1)[-1]
        groups = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"] \
            if name else []
    except (BotoCoreError, ClientError, KeyError) as e:
        outcome, why = classify_error(e) if not isinstance(e, KeyError) else ("permanent", "no Auto Scaling group")
        unreadable = isinstance(e, (NoCredentialsError, PartialCredentialsError)) or outcome == "transient"
        raise (StackUnreadable if unreadable else ValueError)(
            f"ecs.capacity_provider {capacity_provider}: cannot read its Auto Scaling group ({why}); the run "
            "checks its market and zones before launching (needs ecs:DescribeCapacityProviders and "
            "autoscaling:DescribeAutoScalingGroups)") from None
    if not groups:
        raise ValueError(f"ecs.capacity_provider {capacity_provider}: no such capacity provider or group; "
                         "use the stack's CapacityProviderName output")
    return Capacity.of(capacity_provider, groups[0], region)


@dataclass(frozen=True)
class StackPrices:
    """What :func:`price_stack` found: the price table to run with, the group, and what to tell the user."""

    prices: dict[str, Price]
    capacity: Capacity
    notes: list[str] = field(default_factory=list)


def price_stack(settings: EcsSettings, instance_type: str, spot: bool, *, capped: bool,
                session: Any = None) -> StackPrices:
    """Check the stack's market against ``spot`` and price ``instance_type`` in its region and zones.

    Raises StackUnreadable (no credentials, AWS out of reach), ValueError (a market mismatch,
    no such group) and CostError (under a cap, prices that cannot be read for a region the
    table does not cover). Without a cap, a fallback to the table is only a note.
    """
    price_of(instance_type)  # an unknown type is refused before any call
    session = session or aws_session(settings.aws_credentials_block)
    region = settings.region or session.region_name
    if session.get_credentials() is None:
        raise StackUnreadable("no AWS credentials: name an AwsCredentials block (ecs.aws_credentials_block) "
                              "or configure boto3's default chain")
    if not region:
        raise ValueError("ecs.region: no AWS region: set ecs.region, AWS_DEFAULT_REGION or the block's region_name")
    config = client_config(region, quick=True)
    capacity = read_capacity(session.client("ecs", config=config), session.client("autoscaling", config=config),
                             settings.capacity_provider, region)
    capacity.check_market(spot)
    # Every type the group may launch is priced (the ledger bills each instance at its own type's
    # rate); the run's instance type must be the dearest of them per GPU, or the cap, which
    # reserves at its rate, would not hold.
    types = list(dict.fromkeys([instance_type, *(t for t in capacity.instance_types if t in PRICES)]))
    prices, notes = refresh_prices(types, region, capacity.zones, session=session)
    notes += [f"the group may launch {t}, which the price table lacks: it is billed at {instance_type}'s rate"
              for t in capacity.instance_types if t not in PRICES]
    price = prices[instance_type]
    dearest = max(types, key=lambda t: prices[t].per_gpu(spot))
    if capped and prices[dearest].per_gpu(spot) > price.per_gpu(spot):
        raise CostError(
            f"ecs.capacity_provider {capacity.capacity_provider} may launch {dearest} at "
            f"${prices[dearest].per_gpu(spot):.3f}/GPU-h, dearer than --instance-type {instance_type} "
            f"(${price.per_gpu(spot):.3f}); the cap reserves at the run's rate, so run with --instance-type {dearest}")
    if price == PRICES[instance_type]:  # the table: AWS's prices could not be read (the notes say why)
        if region == TABLE_REGION or not capped:
            return StackPrices(prices, capacity, notes)
        raise CostError(
            f"{instance_type} cannot be priced in {region} ({notes[0].split(';')[0]}) and the table holds "
            f"{TABLE_REGION}'s prices only, so the cap could not hold; allow pricing:GetProducts and "
            "ec2:DescribeSpotPriceHistory (the stack's orchestrator policy has both), or run without --max-cost")
    market = f"spot ${price.spot_low:.3f}-{price.spot_high:.3f}/h, dearest zone charged" if spot else \
        f"on-demand ${price.on_demand:.3f}/h"
    return StackPrices(prices, capacity, [*notes, f"{instance_type} priced in {price.where}: {market}"])
