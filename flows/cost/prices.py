"""What an hour of a GPU instance costs: the dated price table and its refresh from AWS.

    python -m flows.grid grid-search/benson2025.yaml --dry-run $ECS --instance-type p5.48xlarge --spot
    python -m flows.grid grid-search/benson2025.yaml --dry-run --refresh-prices   # us-east-1 prices from AWS
    ($ECS: the --backend ecs settings, see flows/grid.py; with them the dry run, like the run,
    prices the stack's own region and zones: flows/ecs/capacity.py)

The table holds us-east-1's prices. AWS prices differ by region (the same g5.xlarge is dearer in
most regions than in us-east-1) and spot prices by zone, so an ECS run asks AWS for its stack's
region and zones (:func:`refresh_prices`). Pure except for that function.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


class CostError(ValueError):
    """Unknown instance type or GPU, unreadable throughput figures, or a cap nothing fits."""


@dataclass(frozen=True)
class Price:
    """An instance type's hourly price; the per-GPU figures are what a cell pays."""

    instance_type: str
    gpu: str  # table key of its GPU (see flows.cost.throughput.GPU_PEAK_TFLOPS)
    gpus: int
    on_demand: float  # $/hour, whole instance
    spot_low: float  # $/hour, cheapest zone
    spot_high: float  # $/hour, dearest zone
    date: str
    source: str
    region: str = "us-east-1"  # where these prices hold
    zones: tuple[str, ...] = ()  # the zones the spot range spans; () all of the region's

    @property
    def spot(self) -> float:
        """The dearest zone's spot price: zones differ, the group may launch in any of them, and
        the cap must hold wherever it does."""
        return self.spot_high

    def per_gpu(self, spot: bool = False) -> float:
        return (self.spot if spot else self.on_demand) / self.gpus

    @property
    def where(self) -> str:
        """``us-east-1`` or ``eu-west-1 (eu-west-1a, eu-west-1b)``: the prices' region and zones."""
        return f"{self.region} ({', '.join(self.zones)})" if self.zones else self.region


TABLE_REGION = "us-east-1"
# On-demand and the spot range across zones, us-east-1 Linux, $/hour for the whole instance, as
# listed by AWS's public EC2 price pages (aws.amazon.com/ec2/pricing/on-demand and
# /ec2/spot/pricing) in June 2026. Refresh with --refresh-prices, or edit the rows and the date.
_CATALOGUE = "AWS EC2 public price list, Linux"
PRICES: dict[str, Price] = {
    p.instance_type: p
    for p in (
        Price("g4dn.xlarge", "T4", 1, 0.526, 0.20, 0.22, "2026-06", _CATALOGUE),
        Price("g5.xlarge", "A10G", 1, 1.006, 0.43, 0.45, "2026-06", _CATALOGUE),
        Price("g6.xlarge", "L4", 1, 0.805, 0.35, 0.40, "2026-06", _CATALOGUE),
        Price("g6e.xlarge", "L40S", 1, 1.861, 0.92, 1.20, "2026-06", _CATALOGUE),
        Price("p3.2xlarge", "V100", 1, 3.06, 0.37, 0.43, "2026-06", _CATALOGUE),
        Price("p4d.24xlarge", "A100", 8, 21.958, 2.47, 8.19, "2026-06", _CATALOGUE),
        Price("p5.48xlarge", "H100", 8, 55.04, 17.6, 25.8, "2026-06", _CATALOGUE),
    )
}


def price_of(instance_type: str, prices: dict[str, Price] | None = None) -> Price:
    prices = prices or PRICES
    if instance_type not in prices:
        raise CostError(f"unknown instance type {instance_type!r}; priced: {', '.join(prices)}")
    return prices[instance_type]


def hourly_price(instance_type: str, spot: bool = False, prices: dict[str, Price] | None = None) -> float:
    """$ per GPU-hour on this instance type (a multi-GPU instance's price / its GPUs)."""
    return price_of(instance_type, prices).per_gpu(spot)


def gpu_of(instance_type: str, prices: dict[str, Price] | None = None) -> str:
    return price_of(instance_type, prices).gpu


# ----------------------------------------------------------------------------- refresh from AWS


def refresh_prices(
    instance_types: list[str] | None = None,
    region: str | None = None,
    zones: list[str] | tuple[str, ...] = (),
    session: Any = None,
    timeout_s: float = 3.0,
) -> tuple[dict[str, Price], list[str]]:
    """On-demand (pricing.get_products) and spot (describe_spot_price_history) prices from AWS.

    ``region``: where the instances run (default: the session's, else us-east-1); ``zones``: the
    zones they may launch in (an Auto Scaling group's), whose dearest spot price the cap uses;
    () spans every zone of the region. Falls back to the table, with a note saying why, when
    boto3 has no credentials or AWS cannot be reached; each call gives up after ``timeout_s``
    and is not retried. A fallback for another region than the table's keeps the table's
    ``region`` (us-east-1), so a caller can tell it was not priced where it runs.
    """
    table = dict(PRICES)
    types = instance_types or list(PRICES)
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        return table, [fallback_note("boto3 is not installed", region)]
    session = session or boto3.Session()
    region = region or session.region_name or TABLE_REGION
    if session.get_credentials() is None:
        return table, [fallback_note("no AWS credentials", region)]
    config = Config(connect_timeout=timeout_s, read_timeout=timeout_s, retries={"max_attempts": 1})
    notes = []
    try:
        # The Price List API answers only in us-east-1 and ap-south-1 (AWS Price List API docs),
        # for every region; spot prices come from the region's own EC2 endpoint.
        pricing = session.client("pricing", region_name="us-east-1", config=config)
        ec2 = session.client("ec2", region_name=region, config=config)
        for it in types:
            table[it], more = fetch_price(pricing, ec2, price_of(it), region, tuple(zones))
            notes += more
    except Exception as e:  # noqa: BLE001 - any failure means: keep the table, say why
        return dict(PRICES), [fallback_note(f"price refresh failed ({type(e).__name__}: {str(e)[:120]})", region)]
    return table, [f"prices of {', '.join(types)} read from AWS for {table[types[0]].where}", *notes]


def fallback_note(why: str, region: str | None) -> str:
    where = "" if region in (None, TABLE_REGION) else f" (for {region}, whose prices may be higher)"
    return f"{why}; using the {TABLE_REGION} price table of {PRICES['g5.xlarge'].date}{where}"


def fetch_price(pricing: Any, ec2: Any, known: Price, region: str, zones: tuple[str, ...]) -> tuple[Price, list[str]]:
    """``known``'s instance type priced in ``region`` (and ``zones``), with notes on what AWS lacked.

    No spot price in those zones (the type is not offered there as spot): spot is priced at
    on-demand, the most a spot instance is charged under the default maximum price (Amazon EC2
    Spot documentation, read 2026-12-02).
    """
    it = known.instance_type
    on_demand = on_demand_price(pricing, it, region)
    if on_demand is None:
        raise LookupError(f"AWS lists no on-demand Linux price for {it} in {region}")
    latest = spot_prices(ec2, it, zones)
    notes = []
    missing = [z for z in zones if z not in latest]
    if not latest:
        notes.append(f"no spot price for {it} in {region} {', '.join(zones) or ''}: spot priced at on-demand")
        low = high = on_demand
    else:
        low, high = min(latest.values()), max(latest.values())
        if missing:
            notes.append(f"no spot price for {it} in {', '.join(missing)}: its spot range spans "
                         f"{', '.join(sorted(latest))}")
    src = "AWS Price List API (on-demand) and spot price history"
    return Price(it, known.gpu, known.gpus, on_demand, low, high, today(), src, region, tuple(zones)), notes


def on_demand_price(pricing: Any, instance_type: str, region: str = TABLE_REGION) -> float | None:
    filters = {
        "instanceType": instance_type,
        "regionCode": region,
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
    }
    reply = pricing.get_products(
        ServiceCode="AmazonEC2",
        Filters=[{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in filters.items()],
        MaxResults=10,
    )
    prices = [p for item in reply.get("PriceList", []) for p in parse_on_demand(item)]
    return min(prices) if prices else None


def parse_on_demand(item: str | dict) -> list[float]:
    """$/hour figures of one PriceList entry (a JSON document per product)."""
    doc = json.loads(item) if isinstance(item, str) else item
    out = []
    for term in doc.get("terms", {}).get("OnDemand", {}).values():
        for dim in term.get("priceDimensions", {}).values():
            usd = float(dim.get("pricePerUnit", {}).get("USD", 0) or 0)
            if usd > 0 and dim.get("unit", "Hrs") == "Hrs":
                out.append(usd)
    return out


def spot_prices(ec2: Any, instance_type: str, zones: tuple[str, ...] = ()) -> dict[str, float]:
    """zone -> the current Linux spot price of ``instance_type`` ({} when none is listed).

    A StartTime of now returns each zone's price in force now (EC2 API Reference,
    DescribeSpotPriceHistory, read 2026-12-02); ``zones`` () asks for every zone.
    """
    import datetime as dt

    params: dict[str, Any] = {
        "InstanceTypes": [instance_type],
        "ProductDescriptions": ["Linux/UNIX", "Linux/UNIX (Amazon VPC)"],
        "StartTime": dt.datetime.now(dt.timezone.utc),
    }
    if zones:
        params["Filters"] = [{"Name": "availability-zone", "Values": list(zones)}]
    history = [p for page in ec2.get_paginator("describe_spot_price_history").paginate(**params)
               for p in page.get("SpotPriceHistory", [])]
    latest: dict[str, float] = {}
    for p in sorted(history, key=lambda p: p["Timestamp"]):
        if not zones or p["AvailabilityZone"] in zones:
            latest[p["AvailabilityZone"]] = float(p["SpotPrice"])
    return latest


def today() -> str:
    import datetime as dt

    return dt.date.today().isoformat()
