"""What each value of a spec must be: types, finiteness, the probe cell.

    problems, parsed = probe_cell(plan, {"lr": 0.0025, "inputs": "anat"}, scale)   # one cell, checked

The values of ``static``, ``hyper`` and ``plan`` are checked by the trainer's own models
(``autolabel.options``: CellOptions for a cell's options, Round for each round of its plan),
one probe cell per level of each factor, never the whole product. Two things Pydantic's lax
mode would take wrongly are refused first: a boolean where a number is expected, and a NaN or
infinity. A round key's value enters each round times that round's ``plan_scale`` factor,
rounded to ``SIGNIFICANT_DIGITS`` significant digits so that cell ids agree across platforms.
The file around the values is read and checked in flows/spec/parse.py; cells are expanded with
:func:`split_values` in flows/spec/cells.py.
"""

from __future__ import annotations

import json
import math
import types
from functools import lru_cache
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter, ValidationError

from autolabel.options import CellOptions, Round
from autolabel.validation import error_lines

# A cell option is a CellOptions field; a round key is a Round field that is not one
# (batch_size is both: in static/hyper it is the cell's, in a plan round an override).
ROUND_KEYS: tuple[str, ...] = tuple(k for k in Round.model_fields if k not in CellOptions.model_fields)

# Round fields the trainer requires but a spec may leave out: the middle levels of the
# published grid (lr 0.00375, bce_weight 0.67), so that a spec varying only, say,
# inputs still trains with the published schedule.
ROUND_DEFAULTS: dict[str, float] = {"lr": 0.00375, "bce_weight": 0.67}
SIGNIFICANT_DIGITS = 6  # derived plan values are rounded so ids agree across platforms


def check_values(
    plan: list[dict], static: dict, hyper: dict[str, list], scale: dict[str, list[float]], lines: list[str]
) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """Check every static value, every level of every factor and every plan round.

    One probe cell per level (static values plus that one level), never the whole
    product, so 1800 cells cost 22 probes. Returns static and hyper normalized.
    """
    # Static: one probe with every static value; errors belong to the key they name.
    probe = {k: levels[0] for k, levels in hyper.items()}
    norm_static: dict[str, Any] = {}
    problems, parsed = probe_cell(plan, {**probe, **static}, scale)
    for key in static:
        lines += [f"static.{p}" for p in problems.get(key, [])]
        if key not in problems:
            norm_static[key] = parsed.get(key, static[key])
    lines += problems.get("plan", []) + problems.get("plan_scale", [])
    # A problem no key owns (a model-level rule of CellOptions) still gets reported.
    owned = {*static, *hyper, "plan", "plan_scale"}
    lines += [f"static: {p}" for key, found in problems.items() if key not in owned for p in found]

    # Hyper: one probe per level; duplicates compare by normalized value.
    norm_hyper: dict[str, list[Any]] = {}
    for key, levels in hyper.items():
        seen: dict[str, int] = {}
        norm_hyper[key] = []
        for i, level in enumerate(levels):
            problems, parsed = probe_cell(plan, {**probe, **static, key: level}, scale)
            lines += [f"hyper.{key}[{i}]{p[len(key):]}" for p in problems.get(key, [])]
            value = parsed.get(key, level)
            canon = json.dumps(value, sort_keys=True)
            if canon in seen:
                lines.append(f"hyper.{key}[{i}]: duplicate of hyper.{key}[{seen[canon]}] ({short(value)})")
            seen.setdefault(canon, i)
            norm_hyper[key].append(value)
    return norm_static, norm_hyper


def type_problems(tp: Any, value: Any, path: str) -> list[tuple[str, str]]:
    """Values Pydantic's lax mode would take wrongly, as (path, problem).

    A boolean where a number is expected (``lr: [true]`` would train at 1.0), and a NaN or
    infinity, which would otherwise be reported as a bound it fails ("should be <= 10").
    """
    tp = unwrap(tp)
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        branches = [unwrap(a) for a in get_args(tp) if a is not type(None)]
        if isinstance(value, bool) and any(b in (bool, Any) for b in branches):
            return []
        fitting = [b for b in branches if fits(b, value)]
        return type_problems(fitting[0], value, path) if fitting else []
    if tp in (int, float):
        if isinstance(value, bool):
            return [(path, f"expected {'a whole number' if tp is int else 'a number'}, got {json.dumps(value)}")]
        if not_finite(value):
            return [(path, f"must be a finite number, got {value}")]
        return []
    if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(value, dict):
        fields = tp.model_fields
        return [p for k, v in value.items() if k in fields for p in type_problems(fields[k].annotation, v, f"{path}.{k}")]
    if origin in (list, tuple) and isinstance(value, list):
        args = get_args(tp)
        uniform = origin is list or (len(args) == 2 and args[1] is Ellipsis)
        return [
            p
            for i, v in enumerate(value)
            if uniform or i < len(args)
            for p in type_problems(args[0] if uniform else args[i], v, f"{path}[{i}]")
        ]
    if origin is dict and isinstance(value, dict):
        return [p for k, v in value.items() for p in type_problems(get_args(tp)[1], v, f"{path}.{k}")]
    return []


def unwrap(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def fits(tp: Any, value: Any) -> bool:
    """Which branch of a union a value is meant for (a dict for a model with its keys, ...)."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return isinstance(value, dict) and set(value) <= set(tp.model_fields)
    if tp in (int, float):
        return isinstance(value, (int, float, str))
    return isinstance(value, list) and get_origin(tp) in (list, tuple)


def not_finite(value: Any) -> bool:
    """NaN or infinity, also as text (``.nan`` is YAML's NaN; ``nan`` is a string Pydantic parses)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return False
    return isinstance(value, float) and not math.isfinite(value)


def field_type(key: str) -> Any:
    """The annotation of a static/hyper key (batch_size: the cell's)."""
    field = CellOptions.model_fields.get(key) or Round.model_fields.get(key)
    return field.annotation if field else Any


def probe_cell(plan: list[dict], values: dict[str, Any], scale: dict[str, list[float]]) -> tuple[dict, dict]:
    """Validate one cell's options and plan: (problem lines by key, normalized values by key).

    A problem is filed under the key that caused it: an option or round key of the
    cell, ``plan`` (a round's own field) or ``plan_scale`` (a default times a scale).
    """
    problems: dict[str, list[str]] = {}
    parsed: dict[str, Any] = {}
    for key, value in values.items():
        found = type_problems(field_type(key), value, key)
        if found:
            problems[key] = [f"{p}: {m}" for p, m in found]
    flagged = set()  # plan fields already reported as a boolean or non-finite number
    for r, rnd in enumerate(plan):
        for k, v in rnd.items():
            for p, m in type_problems(Round.model_fields[k].annotation if k in Round.model_fields else Any, v, k):
                problems.setdefault("plan", []).append(f"plan[{r}].{p}: {m}")
                flagged.add(f"plan[{r}].{p}")
    for key in [k for k in values if k in ROUND_KEYS and k not in problems]:
        try:  # types first (YAML reads 1e-3 as a string), so that scaling multiplies numbers
            parsed[key] = round_type(key).validate_python(values[key])
        except ValidationError as e:
            problems[key] = [f"{key}: {msg}" for _, msg in error_lines(e, values[key])]
    numbers = {k: parsed.get(k, v) for k, v in values.items() if k not in problems}
    options, rounds = split_values(numbers, plan, scale)
    try:
        parsed.update(CellOptions.model_validate(options).model_dump(mode="json", include=set(options)))
    except ValidationError as e:
        for path, msg in error_lines(e, options):
            problems.setdefault(path.split(".")[0].split("[")[0], []).append(f"{path}: {msg}")
    for r, rnd in enumerate(rounds):
        try:
            Round.model_validate(rnd)
        except ValidationError as e:
            for path, msg in error_lines(e, rnd):
                key = path.split(".")[0]
                factor = scale[key][r] if key in scale else 1.0
                if key in numbers and key in problems:
                    continue  # one problem per value: its first failing round says enough
                if key in numbers:
                    via = f"round {r + 1}: {short(numbers[key])} x {factor:g} = {short(rnd[key])}: "
                    problems.setdefault(key, []).append(f"{key}: {via if factor != 1 else ''}{msg}")
                elif key in plan[r]:
                    if f"plan[{r}].{path}" not in flagged:
                        problems.setdefault("plan", []).append(f"plan[{r}].{path}: {msg}")
                else:
                    problems.setdefault("plan_scale", []).append(
                        f"plan_scale.{key}[{r}]: gives {key} = {short(rnd.get(key))} in round {r + 1}: {msg}"
                    )
    return problems, parsed


@lru_cache(maxsize=None)
def round_type(key: str) -> TypeAdapter:
    """The plain type of a Round field (bounds are checked on the whole round)."""
    return TypeAdapter(Round.model_fields[key].annotation)


def split_values(values: dict[str, Any], plan: list[dict], scale: dict[str, list[float]]) -> tuple[dict, list[dict]]:
    """One cell's values -> (options dict, list of round dicts).

    Options are the CellOptions keys. Each round is the plan's round, plus every round
    key's value times its scale for that round (a round's explicit value wins).
    """
    options = {k: v for k, v in values.items() if k in CellOptions.model_fields}
    base = {**ROUND_DEFAULTS, **{k: v for k, v in values.items() if k in ROUND_KEYS}}
    rounds = []
    for r, given in enumerate(plan):
        rnd = {k: v for k, v in given.items() if k in Round.model_fields}  # others: reported by name
        for key, value in base.items():
            if key in rnd:
                continue
            factor = scale[key][r] if key in scale else 1.0
            rnd[key] = round_sig(value * factor) if is_number(value) and factor != 1 else value
        rounds.append(rnd)
    return options, rounds


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def round_sig(x: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """6 significant digits: 0.00844 * 2/3 -> 0.00562667 on every platform."""
    return float(f"{x:.{digits}g}") if math.isfinite(x) else x


def short(value: Any, width: int = 60) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= width else text[: width - 3] + "..."
