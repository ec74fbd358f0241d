"""Pydantic validation errors as ``file: field.path: problem (got value)`` lines.

One formatter for every input a user writes (a cell's options.json and plan.json, a grid
spec): the path is walked through the raw input, so it names the field as the user wrote
it, and where a union's branches disagree only the branch that fits the input speaks.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


def field_path(loc: tuple, raw: Any, kind: str = "") -> str:
    """``('partition', 'function-after[...]', 'train')`` -> ``partition.train``; ``(0, 'lr')`` -> ``[0].lr``.

    The location is walked through the raw input: a part that is not a key (or index)
    there is a union branch tag (``ExplicitPartition``, ``synthetic``) and is dropped. For
    a ``missing`` error the last part is the absent field itself, so it is kept.
    """
    path = ""
    for part in loc:
        if isinstance(raw, list) and isinstance(part, int) and 0 <= part < len(raw):
            path, raw = path + f"[{part}]", raw[part]
        elif isinstance(raw, dict) and part in raw:
            path, raw = (f"{path}.{part}" if path else str(part)), raw[part]
        elif part == "[key]":  # a bad mapping key: the path so far names the mapping
            break
    if kind == "missing" and loc:
        path = f"{path}.{loc[-1]}" if path else str(loc[-1])
    return path


def error_lines(err: ValidationError, raw: Any) -> list[tuple[str, str]]:
    """Pydantic errors as ``(field path, problem)`` pairs in the user's terms, one per distinct problem.

    ``raw`` is the parsed input that failed. Where a union's branches disagree, the branch
    that got the input's type right speaks: ``{"train": []}`` is clearly meant as an
    explicit partition, not a float. A problem deeper in a field hides the field's own.
    """
    errors = [(field_path(e["loc"], raw, e["type"]), e) for e in err.errors()]
    paths = {p for p, _ in errors}
    specific = {p for p, e in errors if not e["type"].endswith(("_type", "_parsing"))}
    out: list[tuple[str, str]] = []
    for path, e in errors:
        deeper = any(o != path and (not path or o.startswith((path + ".", path + "["))) for o in paths)
        if deeper or (path in specific and e["type"].endswith(("_type", "_parsing"))):
            continue
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        scalar = isinstance(got, (str, int, float, bool)) or got is None
        if scalar and e["type"] != "missing" and str(got) not in msg:
            msg += f" (got {got!r})"
        if (path or "(top level)", msg) not in out:
            out.append((path or "(top level)", msg))
    return out


def format_validation_error(shown: str, raw: Any, err: ValidationError) -> list[str]:
    """``shown: field.path: problem (got value)`` lines; ``shown`` is how the user knows the input (a file)."""
    return [f"{shown}: {path}: {msg}" for path, msg in error_lines(err, raw)]
