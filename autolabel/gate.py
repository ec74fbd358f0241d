"""The capture gate: one thread of a run works alone while the others stand still.

    with control.gate.member():        # a cell's thread, for as long as it uses the GPU
        control.gate.safepoint()       # at every step: waits while another thread records
        with control.gate.exclusive(): # record a CUDA graph alone
            ...
        with control.gate.idle():      # a stretch without CUDA calls (a file transfer)
            ...

A CUDA call from another thread can invalidate a graph capture in progress (seen on an H200:
cudaErrorStreamCaptureInvalidated with three cells in threads), so a cell records its graph only
once every other member stands still. Each run has its own gate on its
:class:`autolabel.control.RunControl`; nothing here is module state. Threading only, no torch.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator


class Gate:
    """Lets one thread at a time work alone: the others wait at their next :meth:`safepoint`.

    Threads that use the GPU are members for the time they do (:meth:`member`). A member that
    enters :meth:`exclusive` waits until every other member stands still: at a safepoint, in
    an :meth:`idle` stretch, or queued for its own turn. Then it runs, then releases them. A
    thread that joins while another runs alone waits for the end of that turn first. With no
    other members (a solo run) everything passes straight through.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.members: set[int] = set()  # thread idents
        self.standing: set[int] = set()  # members that make no CUDA call until the owner is done
        self.owner: int | None = None

    @contextmanager
    def member(self) -> Iterator[None]:
        me = threading.get_ident()
        with self.cond:
            while self.owner is not None:  # the owner counted the members it waits for: not this one
                self.cond.wait()
            self.members.add(me)
        try:
            yield
        finally:
            with self.cond:
                self.members.discard(me)
                self.cond.notify_all()

    def stand(self, me: int) -> None:
        """Under ``cond``: stand still until no other thread owns the gate."""
        self.standing.add(me)
        self.cond.notify_all()
        while self.owner not in (None, me):
            self.cond.wait()
        self.standing.discard(me)

    def safepoint(self) -> None:
        if self.owner is None:  # the common case: no lock taken
            return
        with self.cond:
            self.stand(threading.get_ident())

    @contextmanager
    def idle(self) -> Iterator[None]:
        """A stretch with no CUDA call (a file transfer): counts as standing; waits at its end if owned."""
        me = threading.get_ident()
        with self.cond:
            self.standing.add(me)
            self.cond.notify_all()
        try:
            yield
        finally:
            with self.cond:
                while self.owner not in (None, me):
                    self.cond.wait()
                self.standing.discard(me)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        me = threading.get_ident()
        with self.cond:
            while self.owner is not None:
                self.stand(me)
            self.owner = me
            while self.members - self.standing - {me}:
                self.cond.wait()
        try:
            yield
        finally:
            with self.cond:
                self.owner = None
                self.cond.notify_all()
