"""Pydantic validation errors as ``file: field.path: problem (got value)`` lines.

One formatter for every input a user writes (a cell's options.json and plan.json, a grid
spec): the path is walked through the raw input, so it names the field as the user wrote
it, and where a union's branches disagree only the branch that fits the input speaks.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


def field_path(loc: tuple, raw: Any) -> str:
    """``('partition', 'function-after[...]', 'train')`` -> ``partition.train``; ``(0, 'lr')`` -> ``[0].lr``.

    The location is walked through the raw input: a part that is not a key (or index)
    there is a union branch tag (``ExplicitPartition``, ``synthetic``) and is dropped.
    """
    path = ""
    for part in loc:
        if isinstance(raw, list) and isinstance(part, int) and 0 <= part < len(raw):
            path, raw = path + f"[{part}]", raw[part]
        elif isinstance(raw, dict) and part in raw:
            path, raw = (f"{path}.{part}" if path else str(part)), raw[part]
    return path


def format_validation_error(shown: str, raw: Any, err: ValidationError) -> list[str]:
    """``shown: field.path: problem (got value)`` lines, one per distinct pydantic error.

    ``shown`` is how the user knows the input (a file name); ``raw`` the parsed input that
    failed. Where a union's branches disagree, the branch that got the input's type right
    speaks: ``{"train": []}`` is clearly meant as an explicit partition, not a float.
    """
    errors = []
    for e in err.errors():
        path = field_path(e["loc"], raw)
        if e["type"] == "missing":  # the last part is the absent field itself
            path = f"{path}.{e['loc'][-1]}" if path else str(e["loc"][-1])
        errors.append((path, e))
    paths = {p for p, _ in errors}
    specific = {p for p, e in errors if not e["type"].endswith(("_type", "_parsing"))}
    lines: list[str] = []
    for path, e in errors:
        deeper = any(other.startswith(path + ".") or (not path and other) for other in paths if other != path)
        if deeper or (path in specific and e["type"].endswith(("_type", "_parsing"))):
            continue
        got = e.get("input")
        scalar = isinstance(got, (str, int, float, bool)) or got is None
        shown_input = f" (got {got!r})" if scalar and str(got) not in e["msg"] else ""
        line = f"{shown}: {path or '(top level)'}: {e['msg']}{shown_input}"
        if line not in lines:
            lines.append(line)
    return lines
