"""The dated price table, per-GPU prices, and the refresh from AWS (offline: it falls back)."""

from __future__ import annotations

import json
import time

import pytest

from flows.cost import prices


def test_prices_per_gpu():
    assert prices.hourly_price("g5.xlarge") == 1.006
    assert prices.hourly_price("g5.xlarge", spot=True) == pytest.approx(0.45)  # the dearest zone
    assert prices.hourly_price("p5.48xlarge") == pytest.approx(55.04 / 8)
    assert prices.hourly_price("p5.48xlarge", spot=True) == pytest.approx(25.8 / 8)
    assert prices.hourly_price("p4d.24xlarge") == pytest.approx(21.958 / 8)
    assert set(prices.PRICES) == {"g4dn.xlarge", "g5.xlarge", "g6.xlarge", "g6e.xlarge", "p3.2xlarge",
                                  "p4d.24xlarge", "p5.48xlarge"}
    assert all(p.date == "2026-06" and p.source for p in prices.PRICES.values())
    assert prices.gpu_of("g6e.xlarge") == "L40S"
    with pytest.raises(prices.CostError, match=r"unknown instance type 'x1.large'; priced: g4dn.xlarge, g5.xlarge"):
        prices.hourly_price("x1.large")


def test_a_refreshed_table_prices_instead_of_the_default():
    mine = {"g5.xlarge": prices.Price("g5.xlarge", "A10G", 1, 2.0, 1.0, 1.2, "2026-12-01", "test")}
    assert prices.hourly_price("g5.xlarge", prices=mine) == 2.0
    assert prices.hourly_price("g5.xlarge", spot=True, prices=mine) == pytest.approx(1.2)
    with pytest.raises(prices.CostError, match="priced: g5.xlarge$"):
        prices.price_of("p5.48xlarge", mine)


def test_refresh_prices_without_credentials_keeps_the_table(monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    table, notes = prices.refresh_prices(["g5.xlarge"])
    assert table == prices.PRICES and notes == ["no AWS credentials; using the us-east-1 price table of 2026-06"]


def test_refresh_prices_offline_falls_back_quickly(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    start = time.perf_counter()
    table, notes = prices.refresh_prices(["g5.xlarge"], timeout_s=1.0)
    assert time.perf_counter() - start < 10
    assert table == prices.PRICES and notes[0].startswith("price refresh failed (") and "2026-06" in notes[0]


def test_parse_on_demand_reads_a_price_list_entry():
    item = {"product": {"attributes": {"instanceType": "g5.xlarge"}},
            "terms": {"OnDemand": {"T1": {"priceDimensions": {
                "D1": {"unit": "Hrs", "pricePerUnit": {"USD": "1.0060000000"}}}}}}}
    assert prices.parse_on_demand(json.dumps(item)) == [1.006]
