"""What an hour of a GPU instance costs: the dated price table and its refresh from AWS.

    python -m flows.grid grid-search/benson2025.yaml --dry-run $ECS --instance-type p5.48xlarge --spot
    python -m flows.grid grid-search/benson2025.yaml --dry-run $ECS --refresh-prices   # on-demand/spot from AWS
    ($ECS: the --backend ecs settings, see flows/cli.py)

Pure except for :func:`refresh_prices`, which asks AWS's price APIs only when called.
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
    gpu: str  # table key of its GPU (see flows.throughput.GPU_PEAK_TFLOPS)
    gpus: int
    on_demand: float  # $/hour, whole instance
    spot_low: float  # $/hour, cheapest zone
    spot_high: float  # $/hour, dearest zone
    date: str
    source: str

    @property
    def spot(self) -> float:
        """The dearest zone's spot price: zones differ, the group may launch in any of them, and
        the cap must hold wherever it does."""
        return self.spot_high

    def per_gpu(self, spot: bool = False) -> float:
        return (self.spot if spot else self.on_demand) / self.gpus


# On-demand and the spot range across zones, us-east-1 Linux, $/hour for the whole instance, as
# listed by AWS's public EC2 price pages (aws.amazon.com/ec2/pricing/on-demand and
# /ec2/spot/pricing) in June 2026. Refresh with --refresh-prices, or edit the rows and the date.
_CATALOGUE = "AWS EC2 public price list, us-east-1 Linux"
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
    instance_types: list[str] | None = None, timeout_s: float = 3.0
) -> tuple[dict[str, Price], list[str]]:
    """On-demand (pricing.get_products) and spot (describe_spot_price_history) prices from AWS.

    Falls back to PRICES, with a note saying why, when boto3 has no credentials or AWS
    cannot be reached; each call gives up after ``timeout_s`` and is not retried.
    """
    table = dict(PRICES)
    types = instance_types or list(PRICES)
    fallback = f"using the price table of {PRICES['g5.xlarge'].date}"
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        return table, [f"boto3 is not installed; {fallback}"]
    session = boto3.Session()
    if session.get_credentials() is None:
        return table, [f"no AWS credentials; {fallback}"]
    config = Config(connect_timeout=timeout_s, read_timeout=timeout_s, retries={"max_attempts": 1})
    try:
        # The Price List API answers only in us-east-1 and ap-south-1 (AWS Price List API docs).
        pricing = session.client("pricing", region_name="us-east-1", config=config)
        ec2 = session.client("ec2", region_name="us-east-1", config=config)
        for it in types:
            old = price_of(it)
            on_demand = on_demand_price(pricing, it) or old.on_demand
            low, high = spot_range(ec2, it) or (old.spot_low, old.spot_high)
            table[it] = Price(it, old.gpu, old.gpus, on_demand, low, high, today(), "AWS pricing API, us-east-1")
    except Exception as e:  # noqa: BLE001 - any failure means: keep the table, say why
        return dict(PRICES), [f"price refresh failed ({type(e).__name__}: {str(e)[:120]}); {fallback}"]
    return table, [f"prices refreshed from AWS for {', '.join(types)}"]


def on_demand_price(pricing: Any, instance_type: str) -> float | None:
    filters = {
        "instanceType": instance_type,
        "location": "US East (N. Virginia)",
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


def spot_range(ec2: Any, instance_type: str) -> tuple[float, float] | None:
    """(lowest, highest) current spot price across zones."""
    import datetime as dt

    reply = ec2.describe_spot_price_history(
        InstanceTypes=[instance_type],
        ProductDescriptions=["Linux/UNIX"],
        StartTime=dt.datetime.now(dt.timezone.utc),
        MaxResults=100,
    )
    latest: dict[str, float] = {}
    for p in sorted(reply.get("SpotPriceHistory", []), key=lambda p: p["Timestamp"]):
        latest[p["AvailabilityZone"]] = float(p["SpotPrice"])
    return (min(latest.values()), max(latest.values())) if latest else None


def today() -> str:
    import datetime as dt

    return dt.date.today().isoformat()
