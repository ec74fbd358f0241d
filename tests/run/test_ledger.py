"""The cost ledger: reservations under the cap, charges split by work, spend that survives a rerun,
and the file shared by real processes: no interleaved lines, no cap passed together, no line lost."""

from __future__ import annotations

import errno
import gc
import json
import math
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flows.run.ledger import Ledger, LedgerError

ROOT = Path(__file__).resolve().parents[2]


def python(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_reserve_refuses_past_the_cap_and_logs_why(tmp_path):
    ledger = Ledger.open(tmp_path, cap_usd=1.0)
    assert ledger.reserve("a", ["c1"], 0.6)
    assert not ledger.reserve("b", ["c2"], 0.5)  # 0 spent + 0.6 in flight + 0.5 > 1.0
    (skip,) = ledger.entries("skip")
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
    assert again.reserve("x", ["c3"], 7.0) and not again.reserve("y", ["c4"], 0.01)


def test_over_cap_counts_spend_and_reservations(tmp_path):
    ledger = Ledger.open(tmp_path, cap_usd=1.0)
    assert ledger.reserve("a", ["c1"], 0.5)
    ledger.charge(["c1"], gpu_seconds=1.0, usd=0.7)
    assert ledger.over_cap()
    assert not Ledger.open(tmp_path).over_cap()  # no cap, never over


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0, True, "1"])
def test_non_finite_or_negative_amounts_are_refused(tmp_path, bad):
    ledger = Ledger.open(tmp_path, cap_usd=1.0)
    with pytest.raises(LedgerError, match=r"usd must be a finite number >= 0, got .*nothing was recorded"):
        ledger.charge(["c1"], gpu_seconds=1.0, usd=bad)
    with pytest.raises(LedgerError, match="estimate_usd must be a finite number"):
        ledger.reserve("a", ["c1"], bad)
    with pytest.raises(LedgerError, match="split_usd"):
        ledger.charge(["c1", "c2"], gpu_seconds=1.0, usd=1.0, work={"c1": math.inf, "c2": 1.0})
    assert not ledger.path.exists() or ledger.path.read_text() == ""
    assert "nan" not in f"${Ledger.open(tmp_path).spent_usd:.2f}"


def test_a_torn_last_line_blocks_a_capped_run_and_is_cut_off_without_a_cap(tmp_path):
    ledger = Ledger.open(tmp_path, cap_usd=5.0)
    ledger.charge(["c1"], gpu_seconds=1.0, usd=0.25)
    with ledger.path.open("a") as f:
        f.write('{"event": "charge", "usd": 9')  # the process died mid-write
    # Under a cap the torn line's amount is unknown: refused, naming the line.
    with pytest.raises(LedgerError) as err:
        Ledger.open(tmp_path, cap_usd=5.0)
    assert str(err.value).startswith(f"{ledger.path}: line 2: cut short")
    ledger.charge(["c2"], gpu_seconds=1.0, usd=0.5)  # a capped run still going appends after it
    lines = ledger.path.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["usd"] == 0.5  # not glued onto the torn line
    with pytest.raises(LedgerError) as err:
        Ledger.open(tmp_path)
    message = str(err.value)
    assert "\n" not in message and f"{ledger.path}: line 2: not JSON" in message and "delete it, then rerun" in message
    assert ledger.over_cap() is True and not Ledger(ledger.path, cap_usd=5.0).reserve("k", ["c3"], 0.1)
    lines.pop(1)
    ledger.path.write_text("\n".join(lines) + "\n")  # what the message says to do
    assert Ledger.open(tmp_path).spent_usd == 0.75  # both charges count, the second one not lost

    # Without a cap a torn last line is a note, and the next append cuts it off: no repair by hand.
    with ledger.path.open("a") as f:
        f.write('{"event": "charge", "usd": 9')
    free = Ledger.open(tmp_path)
    assert free.spent_usd == 0.75 and "cut short" in free.notes[0] and not free.problems
    free.charge(["c3"], gpu_seconds=1.0, usd=0.125)
    assert [json.loads(x)["usd"] for x in ledger.path.read_text().splitlines()] == [0.25, 0.5, 0.125]
    assert Ledger.open(tmp_path, cap_usd=5.0).spent_usd == 0.875


@pytest.mark.parametrize(
    "line,problem",
    [
        ("[1, 2]", "not a JSON object"),
        ('{"usd": 1}', "unknown event None"),
        ('{"event": "chrage", "usd": 1}', "unknown event 'chrage'"),
        ('{"event": "charge"}', "charge without a finite usd >= 0"),
        ('{"event": "charge", "usd": "0.5"}', "charge without a finite usd >= 0"),
        ('{"event": "charge", "usd": NaN}', "charge without a finite usd >= 0"),
        ('{"event": "charge", "usd": 1, "split_usd": {"c": null}}', "split_usd is not a mapping"),
        ('{"event": "reserve", "usd": 1, "run": "r", "key": "k"}', "reserve without its holder's pid"),
        ('{"event": "release"}', "release without run and key"),
        ("garbage", "not JSON"),
    ],
)
def test_a_malformed_line_is_named_with_its_number(tmp_path, line, problem):
    good = json.dumps({"event": "charge", "usd": 0.5, "cells": []})
    (tmp_path / "ledger.jsonl").write_text(f"{good}\n\n{line}\n{good}\n")
    with pytest.raises(LedgerError) as err:
        Ledger.open(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / 'ledger.jsonl'}: line 3: {problem}")
    assert isinstance(err.value, ValueError)


APPEND = """
    import sys
    from flows.run.ledger import Ledger
    ledger = Ledger.open(sys.argv[1])
    for i in range(int(sys.argv[3])):
        ledger.charge([f"{sys.argv[2]}-{i}"], gpu_seconds=1.0, usd=0.001, note="x" * 2000)
"""


def test_two_processes_appending_at_once_never_interleave(tmp_path):
    procs = [python(APPEND, tmp_path, name, 500) for name in ("a", "b")]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    lines = (tmp_path / "ledger.jsonl").read_text().splitlines()
    cells = [json.loads(x)["cells"][0] for x in lines]  # every line parses
    assert sorted(cells) == sorted(f"{n}-{i}" for n in "ab" for i in range(500))
    assert Ledger.open(tmp_path).spent_usd == pytest.approx(1.0)


RESERVE = """
    import sys, time
    from flows.run.ledger import Ledger
    ledger = Ledger.open(sys.argv[1], cap_usd=1.0)
    go = float(sys.argv[2])
    while time.time() < go:
        pass
    won = [k for k in range(10) if ledger.reserve(f"k{k}", [f"c{k}"], 0.15)]
    print(len(won), flush=True)
    time.sleep(30)  # holds its reservations, as a run with launches in flight
"""


def test_two_processes_cannot_pass_the_cap_together(tmp_path):
    go = time.time() + 1.0
    procs = [python(RESERVE, tmp_path, go) for _ in range(2)]
    try:
        won = [int(p.stdout.readline()) for p in procs]
        assert sum(won) == 6, won  # 6 x 0.15 <= 1.0 < 7 x 0.15, counted across both processes
        mine = Ledger.open(tmp_path, cap_usd=1.0)
        assert not mine.reserve("late", ["c"], 0.15)  # a third one sees both processes' reservations
        (skip,) = mine.entries("skip")[-1:]
        assert skip["in_flight_usd"] == pytest.approx(0.9) and len(skip["others"]) == 6
        # A holder killed by SIGKILL never releases: its reservations close with its process.
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
        assert mine.reserve("after", ["c"], 0.15 * won[0])
    finally:
        for p in procs:
            p.kill()
            p.wait()
    # Its holder gone, nothing of the second process is in flight either.
    assert Ledger.open(tmp_path, cap_usd=1.0).reserve("last", ["c"], 1.0 - 0.15 * won[0])


def test_a_reservation_of_a_ledger_gone_from_this_process_is_closed(tmp_path):
    first = Ledger.open(tmp_path, cap_usd=1.0)
    assert first.reserve("a", ["c1"], 0.8)  # never released: its flow run ended abnormally
    second = Ledger.open(tmp_path, cap_usd=1.0)
    assert not second.reserve("b", ["c2"], 0.5)  # the first ledger still exists: its 0.8 is in flight
    del first
    gc.collect()
    assert second.reserve("b", ["c2"], 0.5)


def test_a_full_disk_records_nothing_half_and_the_ledger_stays_usable(small_disk):
    from tests.conftest import fill

    disk = small_disk(64)
    ledger = Ledger.open(disk, cap_usd=10.0)
    ledger.charge(["c1"], gpu_seconds=1.0, usd=0.25)
    filler = fill(disk)  # only the rest of the ledger's last page is left: part of a line
    with pytest.raises(OSError) as err:
        ledger.charge(["c2"], gpu_seconds=1.0, usd=0.5, detail="x" * 8000)  # past its last page
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(ledger.path)
    assert ledger.path.read_bytes().endswith(b"\n")  # the part written was taken back
    assert Ledger.open(disk, cap_usd=10.0).spent_usd == 0.25  # whole, readable, under a cap too
    filler.unlink()  # space again: the next charge lands
    ledger.charge(["c2"], gpu_seconds=1.0, usd=0.5)
    assert Ledger.open(disk, cap_usd=10.0).spent_usd == 0.75
