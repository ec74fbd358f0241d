"""Pydantic errors as `file: field: problem` lines, named as the user wrote the input."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from autolabel.options import CellOptions, Plan
from autolabel.validation import field_path, format_validation_error


def lines(model, raw) -> list[str]:
    with pytest.raises(ValidationError) as e:
        model.model_validate(raw)
    return format_validation_error("cell/x.json", raw, e.value)


def test_paths_follow_the_raw_input_and_drop_union_tags():
    raw = {"partition": {"train": []}}
    assert field_path(("partition", "ExplicitPartition", "train"), raw) == "partition.train"
    assert field_path((0, "lr"), [{"lr": 0}]) == "[0].lr"
    assert field_path(("nowhere",), {}) == ""


def test_one_line_per_problem_every_problem_at_once():
    got = lines(Plan, [{"lr": 0, "bce_weight": 2, "num_epochs": 1}, {"lr": 0.1, "bce_weight": 0.5}])
    assert got == [
        "cell/x.json: [0].lr: Input should be greater than 0",  # the value is in the message already
        "cell/x.json: [0].bce_weight: Input should be less than or equal to 1 (got 2)",
    ]
    assert lines(Plan, []) == ["cell/x.json: (top level): List should have at least 1 item after validation, not 0"]


def test_the_union_branch_that_fits_the_input_speaks():
    got = lines(CellOptions, {"partition": {"train": [], "validation": ["s1"]}})
    assert got == ["cell/x.json: partition.train: List should have at least 1 item after validation, not 0"]
