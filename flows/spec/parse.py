"""The grid spec: the one file a scientist edits, validated completely before anything runs.

    python -m flows.grid grid-search/demo.yaml --dry-run     # validate, count, price; writes nothing

A spec is YAML (or JSON)::

    name: benson2025                  # output folder: <spec folder>/<name>/
    description: ...
    static: {pretrained: false, until: 2}          # shared by every cell
    hyper:  {lr: [0.0025, 0.00375], inputs: [full, anat]}   # cartesian product
    plan:   [{num_epochs: 10}, {num_epochs: 10}, {num_epochs: 10}]  # base rounds
    plan_scale: {lr: [1, 2/3, 1/3]}                # per-round multipliers (numbers or a/b)
    max_cells: 10000

A ``static``/``hyper`` key is either a cell option (``autolabel.options.CellOptions``)
or a round field that is not an option (``lr``, ``gamma``, ``bce_weight``,
``num_epochs``). A round field's value enters every round of the plan, multiplied by
that round's ``plan_scale`` factor. The default scale is the published one, stretched
to any number of rounds: with n rounds, ``lr`` x (n-r)/n and ``bce_weight`` x
(n-1-r)/(n-1), which for 3 rounds is lr x (1, 2/3, 1/3) and bce_weight x (1, 1/2, 0);
``gamma`` stays constant. A spec that gives no ``lr``/``bce_weight`` trains at the
published grid's middle levels (0.00375, 0.67). The original tooling's ``grid-params.json``
(``{"static": ..., "hyper": ...}``) loads unchanged.

Every problem is reported at once, one ``path.to.field: problem`` line each, by
:class:`SpecError`. Values are checked by the trainer's own models (flows/spec/values.py),
so a spec that validates here gives cells that the trainer accepts.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from autolabel.options import CellOptions, Round
from autolabel.validation import error_lines
from flows.spec.values import ROUND_KEYS, check_values, short, type_problems

# A cell option is a CellOptions field (a round key: flows.spec.values.ROUND_KEYS).
OPTION_KEYS: tuple[str, ...] = tuple(CellOptions.model_fields)
SCALABLE_KEYS = ("lr", "gamma", "bce_weight")
ScalableKey = Literal["lr", "gamma", "bce_weight"]

DEFAULT_ROUNDS = 3  # the published plan: 3 rounds of 10 epochs (Round's default)
MAX_CELLS = 10_000

# Keys of the original grid-params.json that configured its own machines (cache paths,
# multiprocessing); our trainer has its own cache, so a legacy file drops them, with a note.
LEGACY_IGNORED = ("multiproc", "model_cache_path", "data_cache_path")

NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"  # a folder name and an S3 key segment


EXTENSION_PREFIX = "x-"  # top-level keys a spec may add for its own use (YAML anchors), ignored


class SpecError(ValueError):
    """An invalid spec; ``.lines`` holds one ``path.to.field: problem`` per problem."""

    def __init__(self, source: str, lines: list[str]):
        self.source = source
        self.lines = lines
        super().__init__("\n".join(f"{source}: {line}" for line in lines))


def parse_fraction(v: Any) -> Any:
    """``"2/3"`` -> 2/3, so the published schedule can be written exactly."""
    if isinstance(v, str) and re.fullmatch(r"\s*\d+(\.\d*)?\s*/\s*\d+(\.\d*)?\s*", v):
        num, den = (float(x) for x in v.split("/"))
        return num / den if den else v
    return v


Multiplier = Annotated[float, BeforeValidator(parse_fraction), Field(ge=0, le=1000, allow_inf_nan=False)]


class Halving(BaseModel):
    """``halving:`` in a spec (or ``--halving``): successive halving within each inputs x prediction
    stratum, with every level kept and an audit set trained to the end (flows/spec/halving.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    eta: int = Field(3, ge=2, le=1000, description="at each cut, keep the best 1/eta of each stratum's cells")
    cuts: list[int] | None = Field(
        None, description="where the cuts fall, as rounds trained with repeats counted; default [1, rounds of the "
        "plan]: the end of the first round and of the first repeat (one that would be the end is left out)"
    )
    audit_fraction: float = Field(
        0.07, ge=0, le=1, description="share of each stratum's cells that train to the end whatever they score"
    )
    audit_per_stratum: int = Field(2, ge=0, le=1_000_000, description="at least this many audit cells per stratum")


def resolve_cuts(halving: Halving, plan_rounds: int, until: int) -> tuple[Halving, list[str]]:
    """The rule with its cuts spelled out for a plan of ``plan_rounds`` rounds repeated at least
    ``until`` times, and the problems of the cuts given (one ``halving.cuts: ...`` line each)."""
    total = plan_rounds * until
    if halving.cuts is None:
        cuts = sorted(r for r in {1, plan_rounds} if r < total)
        if not cuts:
            return halving, [f"halving: the plan trains {total} round(s) in all, so there is no round boundary to cut "
                             "at; give the plan more rounds or repeats (until)"]
        return halving.model_copy(update={"cuts": cuts}), []
    problems = []
    if not halving.cuts:
        problems.append("halving.cuts: empty; give at least one round, or leave cuts out for the default")
    if any(b <= a for a, b in zip(halving.cuts, halving.cuts[1:])):
        problems.append(f"halving.cuts: {halving.cuts} must rise strictly (rounds trained at each cut)")
    if any(not 1 <= r < total for r in halving.cuts):
        problems.append(f"halving.cuts: {halving.cuts}: each cut is a round from 1 to {total - 1}, before the end "
                        f"(the shortest cell trains {total} rounds: {plan_rounds} x until {until})")
    return halving, problems


class SpecFile(BaseModel):
    """The file as written, before cross-field checks and value checks."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, pattern=NAME, description="output folder name; default: from the file name")
    description: str = Field("", description="free text, shown by the dry run")
    static: dict[str, Any] = Field(default_factory=dict, description="option or round values shared by every cell")
    hyper: dict[str, list[Any]] = Field(default_factory=dict, description="levels per factor; cells = product")
    plan: list[dict[str, Any]] = Field(
        default_factory=lambda: [{} for _ in range(DEFAULT_ROUNDS)],
        min_length=1,
        max_length=100,
        description="base rounds: partial Round fields (num_epochs, batch_size, gamma, ...)",
    )
    plan_scale: dict[ScalableKey, list[Multiplier]] = Field(
        default_factory=dict, description="per-round multipliers of a static/hyper round value"
    )
    max_cells: int = Field(MAX_CELLS, ge=1, le=1_000_000, description="refuse grids larger than this")
    halving: bool | Halving = Field(False, description="successive halving: true for the defaults, or its knobs")


class GridSpec(BaseModel):
    """A validated spec: every value normalized by the trainer's models."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="output folder name (a slug)")
    description: str = Field("", description="free text")
    static: dict[str, Any] = Field(description="shared option and round values, normalized (JSON types)")
    hyper: dict[str, list[Any]] = Field(description="levels of each factor in file order, normalized")
    plan: list[dict[str, Any]] = Field(description="the base rounds as written (explicit round fields)")
    plan_scale: dict[str, list[float]] = Field(description="multiplier per round for each scaled round key")
    max_cells: int = Field(MAX_CELLS, description="the spec's own size limit")
    source: str = Field("", description="file the spec came from")
    legacy: bool = Field(False, description="read from the original tooling's grid-params.json form")
    notes: list[str] = Field(default_factory=list, description="things the dry run should mention")
    halving: Halving | None = Field(None, description="the spec's halving rule, cuts spelled out; None: none")

    @property
    def n_cells(self) -> int:
        return math.prod(len(v) for v in self.hyper.values())

    @property
    def factors(self) -> dict[str, list[Any]]:
        """Hyper factors with more than one level: what distinguishes cells."""
        return {k: v for k, v in self.hyper.items() if len(v) > 1}


# ----------------------------------------------------------------------------- loading


def load_spec(path: str | Path) -> GridSpec:
    """Read and validate a spec file; raises SpecError (or FileNotFoundError)."""
    path = Path(path)
    text = path.read_text()
    raw = parse_text(text, str(path), json_only=path.suffix.lower() == ".json")
    return check_spec(raw, source=str(path), default_name=default_name(path))


def default_name(path: Path) -> str:
    """A spec without ``name`` is named after its file; ``grid-params.json`` after its folder."""
    stem = path.resolve().parent.name if path.name == "grid-params.json" else path.stem
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-_")[:64]
    return slug if re.match(NAME, slug) else "grid"


class _UniqueKeyLoader(yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader):  # type: ignore[misc]
    """YAML that refuses a key given twice (PyYAML would silently keep the last one).

    A key merged in by ``<<: *base`` is no duplicate: the mapping's own value overrides it,
    as YAML's merge key defines. A key must be a plain value (a list cannot name a field).
    """

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, f"a key must be a name or a number, not a {type(key).__name__} ({short(key)})",
                    key_node.start_mark,
                ) from None
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (lines {seen[key]} and {line})", key_node.start_mark
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_text(text: str, source: str, json_only: bool = False) -> Any:
    """YAML or JSON text -> Python data; a syntax error names its line."""
    if json_only:
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(source, [f"line {e.lineno}, column {e.colno}: invalid JSON: {e.msg}"]) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a safe loader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise SpecError(source, [f"{where}YAML syntax error: {problem}"]) from None


# ----------------------------------------------------------------------------- validation


def check_spec(raw: Any, source: str = "<spec>", default_name: str = "grid") -> GridSpec:
    """Validate parsed spec data completely; raise SpecError with every problem at once.

    1. the file's shape (SpecFile); 2. key names and cross-field rules; 3. every value
    of static, hyper and plan through CellOptions/Round; 4. the cell count.
    """
    if not isinstance(raw, dict):
        empty = "the file is empty; " if raw is None else ""
        raise SpecError(source, [f"(top level): {empty}a spec is a mapping with name, static, hyper and plan"])
    notes: list[str] = []
    # Top-level keys starting with "x-" are ignored, as in Compose files: a home for YAML anchors
    # (x-base: &base {...}) that every other unknown key, a typo most likely, does not get.
    raw = {k: v for k, v in raw.items() if not (isinstance(k, str) and k.startswith(EXTENSION_PREFIX))}
    legacy = source.endswith(".json") and set(raw) == {"static", "hyper"}
    if legacy and isinstance(raw["static"], dict):
        dropped = [k for k in LEGACY_IGNORED if k in raw["static"]]
        raw = {**raw, "static": {k: v for k, v in raw["static"].items() if k not in dropped}}
        if dropped:
            notes.append(f"legacy grid-params.json: ignored {', '.join(dropped)} (settings of the original machines)")

    # 1. Shape; on errors keep checking whatever parts are usable.
    lines: list[str] = [f"{p.lstrip('.')}: {m}" for p, m in type_problems(SpecFile, raw, "")]
    flagged = {line.split(": ", 1)[0] for line in lines}
    try:
        spec = SpecFile.model_validate(raw)
    except ValidationError as e:
        lines += [line for line in shape_errors(e, raw) if line.split(": ", 1)[0] not in flagged]
        spec = salvage(raw)
    # 2.-3. Names, cross-field rules, values.
    static, hyper = check_keys(spec, lines)
    plan_scale = resolve_scale(spec, lines)
    norm_static, norm_hyper = check_values(spec.plan, static, hyper, plan_scale, lines)
    # 4. Size.
    n = math.prod(len(v) for v in hyper.values()) if hyper else 1
    if n > spec.max_cells:
        sizes = " x ".join(f"{len(v)} {k}" for k, v in hyper.items())
        lines.append(f"hyper: {sizes} = {n} cells, over max_cells {spec.max_cells}; drop levels or raise max_cells")
    halving = None
    if spec.halving is not False:
        halving, problems = resolve_cuts(Halving() if spec.halving is True else spec.halving, len(spec.plan),
                                         shortest_until(norm_static, norm_hyper))
        lines += problems
    if lines:
        raise SpecError(source, list(dict.fromkeys(lines)))
    return GridSpec(
        name=spec.name or default_name,
        description=spec.description,
        static=norm_static,
        hyper=norm_hyper,
        plan=spec.plan,
        plan_scale=plan_scale,
        max_cells=spec.max_cells,
        source=source,
        legacy=legacy,
        notes=notes,
        halving=halving,
    )


def shortest_until(static: dict[str, Any], hyper: dict[str, list[Any]]) -> int:
    """The fewest repeats (``until``) any cell of the spec trains."""
    levels = [u for u in hyper.get("until", [static.get("until")]) if isinstance(u, int)]  # bad ones: reported apart
    return min(levels, default=CellOptions.model_fields["until"].default)


def salvage(raw: dict) -> SpecFile:
    """The usable parts of a spec whose shape is wrong, so later checks still run."""
    usable: dict[str, Any] = {}
    if isinstance(raw.get("static"), dict):
        usable["static"] = {str(k): v for k, v in raw["static"].items()}
    if isinstance(raw.get("hyper"), dict):
        usable["hyper"] = {str(k): v for k, v in raw["hyper"].items() if isinstance(v, list)}
    if isinstance(raw.get("plan"), list) and raw["plan"] and all(isinstance(r, dict) for r in raw["plan"]):
        usable["plan"] = [{str(k): v for k, v in r.items()} for r in raw["plan"]]
    if isinstance(raw.get("plan_scale"), dict):
        usable["plan_scale"] = {k: v for k, v in raw["plan_scale"].items() if usable_scale(k, v)}
    return SpecFile.model_validate(usable)


def usable_scale(key: Any, value: Any) -> bool:
    try:
        SpecFile.model_validate({"plan_scale": {key: value}})
        return True
    except ValidationError:
        return False


def check_keys(spec: SpecFile, lines: list[str]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """Unknown names, a key in both static and hyper, empty hyper lists; returns the usable keys."""
    known = OPTION_KEYS + ROUND_KEYS
    static: dict[str, Any] = {}
    for k, v in spec.static.items():
        if k in known:
            static[k] = v
        else:
            lines.append(f"static.{k}: {unknown_name(k, known)}")
    hyper: dict[str, list[Any]] = {}
    for k, v in spec.hyper.items():
        if k not in known:
            lines.append(f"hyper.{k}: {unknown_name(k, known)}")
        elif not v:
            lines.append(f"hyper.{k}: empty list; give at least one level")
        else:
            hyper[k] = v  # checked level by level even if also static, so every error shows
            if k in spec.static:
                lines.append(f"hyper.{k}: also set in static; give {k} in one place")
    for r, rnd in enumerate(spec.plan):
        for k in rnd:
            if k not in Round.model_fields:
                lines.append(f"plan[{r}].{k}: {unknown_name(k, tuple(Round.model_fields), 'round field')}")
            elif k in ROUND_KEYS and (k in spec.static or k in spec.hyper):
                where = "static" if k in spec.static else "hyper"
                lines.append(f"plan[{r}].{k}: also set by {where}.{k}; give {k} in one place")
            elif k in spec.plan_scale:
                lines.append(f"plan[{r}].{k}: set per round, so plan_scale.{k} cannot scale it; drop one")
    return static, hyper


def unknown_name(key: str, known: tuple[str, ...], kind: str = "option") -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"unknown {kind}; {hint}known: {', '.join(known)}"


def default_scale(key: str, rounds: int) -> list[float]:
    """The published schedule stretched to any round count (3 rounds: lr 1, 2/3, 1/3; bce 1, 1/2, 0)."""
    if key == "lr":
        return [(rounds - r) / rounds for r in range(rounds)]
    if key == "bce_weight":
        return [1.0] if rounds == 1 else [(rounds - 1 - r) / (rounds - 1) for r in range(rounds)]
    return [1.0] * rounds


def resolve_scale(spec: SpecFile, lines: list[str]) -> dict[str, list[float]]:
    """Each scaled key's multipliers: the spec's where given, else the published default."""
    rounds = len(spec.plan)
    scale: dict[str, list[float]] = {}
    for key in SCALABLE_KEYS:
        given = spec.plan_scale.get(key)  # type: ignore[call-overload]
        if given is None:
            scale[key] = default_scale(key, rounds)
        elif len(given) != rounds:
            lines.append(
                f"plan_scale.{key}: {len(given)} multipliers for a plan of {rounds} rounds; give one per round"
            )
            scale[key] = [1.0] * rounds
        else:
            scale[key] = list(given)
    return scale


# ----------------------------------------------------------------------------- error lines


def shape_errors(err: ValidationError, raw: Any) -> list[str]:
    """SpecFile errors as lines; an unknown top-level key lists the keys that exist."""
    out = []
    for path, msg in error_lines(err, raw):
        if "." not in path and "[" not in path and msg.startswith("Extra inputs"):
            msg = (f"unknown key; {unknown_name(path, tuple(SpecFile.model_fields), 'key').split('; ', 1)[1]}; "
                   f"keys starting with {EXTENSION_PREFIX} are ignored (a home for YAML anchors)")
        elif path == "name" and msg.startswith("String should match pattern"):
            msg = f"use 1-64 letters, digits, '-' or '_', starting with a letter or digit (got {raw['name']!r})"
        out.append(f"{path}: {msg}")
    return out
