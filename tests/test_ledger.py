"""The cost ledger: reservations under the cap, charges split by work, spend that survives a rerun."""

import json

from flows.ledger import Ledger


def test_reserve_refuses_past_the_cap_and_logs_why(tmp_path):
    ledger = Ledger.open(tmp_path, cap_usd=1.0)
    assert ledger.reserve("a", ["c1"], 0.6)
    assert not ledger.reserve("b", ["c2"], 0.5)  # 0 spent + 0.6 in flight + 0.5 > 1.0
    (skip,) = ledger.skipped()
    assert skip["cells"] == ["c2"] and skip["reason"] == "cost cap"
    assert skip["in_flight_usd"] == 0.6 and skip["estimate_usd"] == 0.5 and skip["cap_usd"] == 1.0
    ledger.release("a")
    assert ledger.reserve("b", ["c2"], 0.5)


def test_charge_splits_a_pack_by_work_and_a_rerun_counts_it(tmp_path):
    ledger = Ledger.open(tmp_path, cap_usd=10.0)
    ledger.charge(["c1", "c2"], gpu_seconds=36.0, usd=3.0, work={"c1": 1.0, "c2": 2.0})
    assert ledger.per_cell_usd == {"c1": 1.0, "c2": 2.0}
    again = Ledger.open(tmp_path, cap_usd=10.0)
    assert again.spent_usd == 3.0 and again.per_cell_usd == {"c1": 1.0, "c2": 2.0}
    assert again.remaining_usd() == 7.0


def test_a_line_cut_short_by_a_kill_does_not_lose_the_rest(tmp_path):
    ledger = Ledger.open(tmp_path)
    ledger.charge(["c1"], gpu_seconds=1.0, usd=0.25)
    with ledger.path.open("a") as f:
        f.write('{"event": "charge", "usd": 9')  # the process died mid-write
    assert Ledger.open(tmp_path).spent_usd == 0.25
    assert json.loads(ledger.path.read_text().splitlines()[0])["split_usd"] == {"c1": 0.25}


def test_over_cap_counts_spend_and_reservations(tmp_path):
    ledger = Ledger.open(tmp_path, cap_usd=1.0)
    assert ledger.reserve("a", ["c1"], 0.5)
    ledger.charge(["c1"], gpu_seconds=1.0, usd=0.7)
    assert ledger.over_cap()
    assert not Ledger.open(tmp_path).over_cap()  # no cap, never over
