"""Test-side AWS prices: the Price List API over real HTTP, and spot prices per zone in moto's EC2.

moto has no Price List service, and its DescribeSpotPriceHistory answers one fixed price
($0.00001) for every zone. :class:`PriceList` is a small HTTP server speaking the Price List
API's JSON protocol (``X-Amz-Target: AWSPriceListService.GetProducts``, TERM_MATCH filters over
product attributes, each PriceList entry a JSON document); botocore reaches it through
``AWS_ENDPOINT_URL_PRICING``. :func:`spot_market` makes moto's spot price history answer the
prices a test sets, zone by zone, as EC2 does.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LINUX = {"operatingSystem": "Linux", "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "Used"}


class PriceList:
    """A Price List API endpoint with on-demand prices set by the test: ``{(type, region): usd}``."""

    def __init__(self, on_demand: dict[tuple[str, str], float]):
        self.on_demand = dict(on_demand)
        self.requests: list[dict[str, Any]] = []
        catalogue = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                catalogue.requests.append({"target": self.headers.get("X-Amz-Target"), **body})
                reply = json.dumps(catalogue.get_products(body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def get_products(self, body: dict[str, Any]) -> dict[str, Any]:
        wanted = {f["Field"]: f["Value"] for f in body.get("Filters", []) if f.get("Type") == "TERM_MATCH"}
        found = []
        for (it, region), usd in self.on_demand.items():
            attributes = {"instanceType": it, "regionCode": region, **LINUX}
            if body.get("ServiceCode") == "AmazonEC2" and all(attributes.get(k) == v for k, v in wanted.items()):
                sku = f"{it}.{region}"
                found.append(json.dumps({
                    "product": {"sku": sku, "productFamily": "Compute Instance", "attributes": attributes},
                    "terms": {"OnDemand": {f"{sku}.JRTCKXETXF": {"priceDimensions": {f"{sku}.6YS6EN2CT7": {
                        "unit": "Hrs", "pricePerUnit": {"USD": f"{usd:.10f}"}}}}}},
                }))
        return {"FormatVersion": "aws_v1", "PriceList": found}

    def __enter__(self) -> PriceList:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def spot_market(monkeypatch, prices: dict[tuple[str, str], float]) -> list[dict[str, Any]]:
    """moto's DescribeSpotPriceHistory answers ``{(type, zone): usd}``; returns the requests it saw.

    Honours InstanceTypes and the availability-zone filter, as EC2 does; the zones of one region
    only (a zone's name starts with its region's).
    """
    from moto.core.responses import ActionResult
    from moto.ec2.responses.spot_instances import SpotInstances

    seen: list[dict[str, Any]] = []

    def describe_spot_price_history(self: Any) -> Any:
        types = self._get_param("InstanceTypes", [])
        zones = self._filters_from_querystring().get("availability-zone")
        seen.append({"region": self.region, "types": types, "zones": zones})
        history = [
            {"InstanceType": it, "ProductDescription": "Linux/UNIX", "SpotPrice": f"{usd:.6f}",
             "AvailabilityZone": zone, "Timestamp": "2026-12-01T00:00:00.000Z"}
            for (it, zone), usd in prices.items()
            if zone.startswith(self.region) and (not types or it in types) and (not zones or zone in zones)
        ]
        return ActionResult({"SpotPriceHistory": history})

    monkeypatch.setattr(SpotInstances, "describe_spot_price_history", describe_spot_price_history)
    return seen
