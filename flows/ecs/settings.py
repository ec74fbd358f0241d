"""The ECS backend's settings: the flow's ``ecs`` parameter, the CloudFormation stack's outputs.

    python -m flows.grid grid-search/demo.yaml --dry-run --backend ecs --ecs cluster=... (flows/grid.py)

Pure: validation only (pydantic), no AWS call. The runner is flows/ecs/runner.py.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    WithJsonSchema,
)

# ----------------------------------------------------------------------------- settings

# A published cell's checkpoint is 200-450 MB. Every 300 s, one cell uploads at most
# 12 x 0.45 = 5.4 GB an hour: free through the stack's S3 gateway endpoint, about $0.24 an hour
# through a NAT gateway ($0.045 per GB processed, Amazon VPC pricing, read 2026-12-01). The
# trainer's own default (60 s) would be 27 GB, $1.2 an hour. A Spot loss costs at most 300 s.
CHECKPOINT_EVERY_S = 300.0


# The same rules as autolabel.storage.split_s3, which checks every URI again before use.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_KEY_PART = re.compile(r"^[A-Za-z0-9_.=+-]+$")


def _none_if_empty(value: Any) -> Any:
    return None if value in ("", None) else value


def _none_if_zero(value: Any) -> Any:
    return None if value in ("", None, 0) else value


# Optional settings are None in Python but a plain input on Prefect's run form: a `str | None`
# field renders there as a str/None switch reading 'Property is type "None"' (prefect 3.9.1 UI,
# seen 2026-12-01). So the form sees a string ("" = unset) or a number (0 = none).
Text = Annotated[str | None, BeforeValidator(_none_if_empty),
                 PlainSerializer(lambda v: v or "", return_type=str), WithJsonSchema({"type": "string"})]
Seconds = Annotated[float | None, BeforeValidator(_none_if_zero),
                    PlainSerializer(lambda v: v or 0.0, return_type=float),
                    WithJsonSchema({"type": "number", "minimum": 0})]


class EcsSettings(BaseModel):
    """The flow's ``ecs`` parameter: where cells train on AWS (the CloudFormation stack's outputs).

    Every field has a default, so the Prefect UI's run form shows one plain input per setting and
    a local run needs none of them; :meth:`parse` is the check an ECS run makes (the four stack
    outputs set, the bucket and prefixes well formed). Unset text is "" on the form and None here.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    cluster: str = Field("", description="ECS cluster name or ARN (stack output ClusterName); required for ECS")
    capacity_provider: str = Field(
        "", description="GPU capacity provider (stack output CapacityProviderName); required for ECS")
    task_definition: str = Field(
        "", description="training task definition, family[:revision] or ARN (stack output TaskDefinitionArn); "
        "required for ECS")
    bucket: str = Field("", description="S3 bucket for cells (stack output BucketName); required for ECS",
                        json_schema_extra={"pattern": f"^$|{_BUCKET.pattern}"})
    container_name: str = Field("trainer", min_length=1, description="container whose command becomes the cell URIs")
    prefix: Text = Field(None, description="part of the bucket the task role may write (CellsPrefix); empty: none",
                         json_schema_extra={"default": ""})
    grid_prefix: Text = Field(None, description="the grid's folder under prefix; empty: the grid's name",
                              json_schema_extra={"default": ""})
    subnets: list[str] = Field(default=[], description="awsvpc subnets, only for an awsvpc task definition")
    security_groups: list[str] = Field(default=[], description="awsvpc security groups")
    assign_public_ip: bool = Field(False, description="awsvpc: give tasks a public IP (no NAT gateway)")
    region: Text = Field(None, description="AWS region; empty: the credentials' or boto3's",
                         json_schema_extra={"default": ""})
    aws_credentials_block: Text = Field(
        None, description="prefect-aws AwsCredentials block name; empty: boto3's credential chain",
        json_schema_extra={"default": ""})
    provisioning_timeout_s: float = Field(1800.0, gt=0, description="longest wait for capacity, then retry")
    poll_interval_s: float = Field(5.0, gt=0, description="describe_tasks cadence (grows while idle)")
    log_group: Text = Field(None, description="awslogs group; empty: from the task definition",
                            json_schema_extra={"default": ""})
    log_stream_prefix: Text = Field(None, description="awslogs stream prefix; empty: from the task definition",
                                    json_schema_extra={"default": ""})
    download_models: bool = Field(True, description="fetch each cell's model.pt; off for big grids (stays in S3)")
    runtime_limit_factor: float = Field(3.0, gt=0, description="a pack may run this many times its expected GPU-seconds")
    runtime_limit_startup_s: float = Field(900.0, ge=0, description="... plus this, for start-up and data loading")
    runtime_limit_s: Seconds = Field(None, gt=0, description="a fixed runtime limit per pack instead; 0: none",
                                     json_schema_extra={"default": 0})
    checkpoint_every_s: float = Field(
        CHECKPOINT_EVERY_S, ge=0, description="the trainer's checkpoint cadence in S3 (bounds upload GB per hour)")

    def problems(self) -> list[tuple[str, str]]:
        """What an ECS run cannot start with: (field, problem) pairs, in field order."""
        out = [(name, f"required for the ECS backend: give the {_stack_output(name)}")
               for name in REQUIRED if not getattr(self, name)]
        if self.bucket and not _BUCKET.match(self.bucket):
            out.append(("bucket", f"{self.bucket!r}: not an S3 bucket name (3-63 lowercase letters, digits, '.', '-')"))
        for name in ("prefix", "grid_prefix"):
            v = getattr(self, name)
            if v is not None and not all(_KEY_PART.match(p) and p not in (".", "..") for p in v.strip("/").split("/")):
                out.append((name, f"{v!r}: use folder names of letters, digits, _ . = + - joined by '/' (no '..')"))
        return out

    @classmethod
    def parse(cls, ecs: EcsSettings | dict[str, Any] | None) -> EcsSettings:
        """The settings of an ECS run, or a ValueError with one ``ecs.field: problem`` line per problem.

        Takes the flow's parameter (a model or its dict; "" and None mean unset, as Prefect
        variables left empty give) and checks all of it at once, in field order.
        """
        raw = ecs.model_dump() if isinstance(ecs, EcsSettings) else dict(ecs or {})
        raw = {k: v for k, v in raw.items() if v not in ("", None)}
        order = list(cls.model_fields)
        try:
            settings = cls.model_validate(raw)
            found = settings.problems()
        except ValidationError as e:
            known = cls.model_validate({k: v for k, v in raw.items() if k in order and
                                        not any(err["loc"][:1] == (k,) for err in e.errors())})
            found = [(".".join(map(str, err["loc"])) or "(settings)", err["msg"].removeprefix("Value error, "))
                     for err in e.errors()] + known.problems()
        if found:
            found.sort(key=lambda p: order.index(p[0].split(".")[0]) if p[0].split(".")[0] in order else len(order))
            raise ValueError("\n".join(f"ecs.{field}: {problem}" for field, problem in found))
        return settings


# The stack outputs an ECS run cannot do without (deployments/cloudformation.yaml).
REQUIRED = ("cluster", "capacity_provider", "task_definition", "bucket")


def _stack_output(name: str) -> str:
    """'the stack output ClusterName' from the field's description, for the missing-setting line."""
    text = EcsSettings.model_fields[name].description or ""
    return text[text.find("(") + 1:text.find(")")] if "(" in text else f"{name} setting"


def parse_ecs_pairs(pairs: list[str]) -> dict[str, Any]:
    """CLI ``--ecs KEY=VALUE`` pairs -> the flow's ``ecs`` dict, validated (lists comma-separated)."""
    return EcsSettings.parse(split_ecs_pairs(pairs)).model_dump(exclude_defaults=True)


def split_ecs_pairs(pairs: list[str]) -> dict[str, Any]:
    """CLI ``--ecs KEY=VALUE`` pairs as given, not yet validated (ValueError only for a pair without '=')."""
    raw: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--ecs {pair}: expected KEY=VALUE, e.g. --ecs cluster=autolabel")
        raw[key.strip().replace("-", "_")] = value.strip()
    for key in ("subnets", "security_groups"):
        if key in raw:
            raw[key] = [v.strip() for v in raw[key].split(",") if v.strip()]
    return raw
