"""The run-control object: the checkpoint interval's sources, and the stop request."""

from __future__ import annotations

import pytest

from autolabel.control import (
    CHECKPOINT_ENV,
    DEFAULT_CHECKPOINT_EVERY_S,
    RunControl,
    parse_seconds,
)
from autolabel.errors import BadInput


def test_the_checkpoint_interval_comes_from_the_flag_then_the_environment_then_the_default(monkeypatch):
    monkeypatch.setenv(CHECKPOINT_ENV, "30")
    assert RunControl(checkpoint_every_s=0).checkpoint_interval() == 0
    assert RunControl().checkpoint_interval() == 30
    monkeypatch.delenv(CHECKPOINT_ENV)
    assert RunControl().checkpoint_interval() == DEFAULT_CHECKPOINT_EVERY_S == 60
    monkeypatch.setenv(CHECKPOINT_ENV, "inf")
    with pytest.raises(BadInput, match=r"^\$AUTOLABEL_CHECKPOINT_EVERY_S: expected seconds >= 0, got 'inf'$"):
        RunControl().checkpoint_interval()


def test_seconds_must_be_finite_and_not_negative():
    assert parse_seconds("2.5", "--checkpoint-every") == 2.5
    for raw in ("-1", "nan", "soon", ""):
        with pytest.raises(BadInput, match="--checkpoint-every: expected seconds >= 0"):
            parse_seconds(raw, "--checkpoint-every")


def test_a_stop_request_names_who_asked_and_each_run_has_its_own():
    control, other = RunControl(), RunControl()
    assert not control.stop_requested and control.graphs and control.shared_data is None
    control.request_stop("Ctrl-C")
    assert control.stop_requested and control.stop_reason == "Ctrl-C"
    assert not other.stop_requested and other.init_lock is not control.init_lock
