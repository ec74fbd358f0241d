"""The capture gate (autolabel/gate.py): one thread works alone while the others stand still."""

from __future__ import annotations

import threading
import time

from autolabel.gate import Gate


def test_exclusive_waits_until_every_other_member_stands_at_a_safepoint():
    gate, events = Gate(), []
    member_started, release_member = threading.Event(), threading.Event()

    def member() -> None:
        with gate.member():
            member_started.set()
            release_member.wait(5)  # busy with GPU work: no safepoint yet
            events.append("member at safepoint")
            gate.safepoint()  # stands still while the other records
            events.append("member resumed")

    def recorder() -> None:
        with gate.member():
            member_started.wait(5)
            with gate.exclusive():
                events.append("recording")
                time.sleep(0.1)
                events.append("recorded")

    threads = [threading.Thread(target=member), threading.Thread(target=recorder)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    assert events == []  # the recorder waits for the member
    release_member.set()
    for t in threads:
        t.join(5)
    assert events == ["member at safepoint", "recording", "recorded", "member resumed"]


def test_idle_members_and_queued_recorders_do_not_block_a_recording():
    gate, order = Gate(), []
    in_idle, leave_idle = threading.Event(), threading.Event()

    def transfer() -> None:
        with gate.member(), gate.idle():  # a file upload: no CUDA call
            in_idle.set()
            leave_idle.wait(5)
        order.append("transfer done")

    def record(name: str) -> None:
        with gate.member():
            in_idle.wait(5)
            with gate.exclusive():
                order.append(name)
                time.sleep(0.05)

    threads = [threading.Thread(target=transfer)] + [threading.Thread(target=record, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join(5)
    assert sorted(order) == ["a", "b"]  # both recorded, one after the other, while the transfer ran
    leave_idle.set()
    threads[0].join(5)
    assert order[-1] == "transfer done"


def test_a_thread_joining_during_a_recording_waits_for_its_end():
    gate, events = Gate(), []
    recording, finish = threading.Event(), threading.Event()

    def recorder() -> None:
        with gate.member(), gate.exclusive():
            recording.set()
            finish.wait(5)
            events.append("recorded")

    def late() -> None:
        recording.wait(5)
        with gate.member():  # a new cell starting: its data and model would be CUDA work
            events.append("late cell starts")

    threads = [threading.Thread(target=recorder), threading.Thread(target=late)]
    for t in threads:
        t.start()
    recording.wait(5)
    time.sleep(0.1)
    assert events == []
    finish.set()
    for t in threads:
        t.join(5)
    assert events == ["recorded", "late cell starts"]


def test_a_lone_thread_passes_straight_through():
    # With no other member nothing waits: a solo run never blocks on the gate. Run in a thread,
    # so that a gate that waited would show as a timeout here instead of hanging the suite.
    gate = Gate()
    passed: list[str] = []

    def alone() -> None:
        with gate.exclusive():
            gate.safepoint()
            passed.append("exclusive")
        with gate.member(), gate.exclusive():
            passed.append("member and exclusive")
        with gate.idle():
            passed.append("idle")

    t = threading.Thread(target=alone, daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive() and passed == ["exclusive", "member and exclusive", "idle"]
    assert gate.owner is None and not gate.members and not gate.standing
