"""The ECS backend's settings: the flow's ``ecs`` parameter, the CloudFormation stack's outputs.

    python -m flows.grid grid-search/demo.yaml --dry-run --backend ecs --ecs cluster=... (flows/cli.py)

Pure: validation only (pydantic), no AWS call. The runner is flows/ecs.py.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# ----------------------------------------------------------------------------- settings

# A published cell's checkpoint is 200-450 MB. Every 300 s, one cell uploads at most
# 12 x 0.45 = 5.4 GB an hour: free through the stack's S3 gateway endpoint, about $0.24 an hour
# through a NAT gateway ($0.045 per GB processed, Amazon VPC pricing, read 2026-12-01). The
# trainer's own default (60 s) would be 27 GB, $1.2 an hour. A Spot loss costs at most 300 s.
CHECKPOINT_EVERY_S = 300.0


# The same rules as autolabel.storage.split_s3, which checks every URI again before use.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_KEY_PART = re.compile(r"^[A-Za-z0-9_.=+-]+$")


class EcsSettings(BaseModel):
    """The flow's ``ecs`` parameter: where cells train on AWS (the CloudFormation stack's outputs)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cluster: str = Field(min_length=1, description="ECS cluster name or ARN (stack output ClusterName)")
    capacity_provider: str = Field(min_length=1, description="GPU capacity provider (CapacityProviderName)")
    task_definition: str = Field(min_length=1, description="training task definition, family[:revision] or ARN")
    bucket: str = Field(description="S3 bucket for cells (BucketName)")
    container_name: str = Field("trainer", description="container whose command becomes the cell URIs")
    prefix: str | None = Field(None, description="part of the bucket the task role may write (CellsPrefix)")
    grid_prefix: str | None = Field(None, description="the grid's folder under prefix (default: grid name)")
    subnets: list[str] | None = Field(None, description="awsvpc subnets, only for an awsvpc task definition")
    security_groups: list[str] | None = Field(None, description="awsvpc security groups")
    assign_public_ip: bool = Field(False, description="awsvpc: give tasks a public IP (no NAT gateway)")
    region: str | None = Field(None, description="AWS region (default: the credentials' or boto3's)")
    aws_credentials_block: str | None = Field(None, description="prefect-aws AwsCredentials block name")
    provisioning_timeout_s: float = Field(1800.0, gt=0, description="longest wait for capacity, then retry")
    poll_interval_s: float = Field(5.0, gt=0, description="describe_tasks cadence (grows while idle)")
    log_group: str | None = Field(None, description="awslogs group (default: from the task definition)")
    log_stream_prefix: str | None = Field(None, description="awslogs stream prefix (default: as above)")
    download_models: bool = Field(True, description="fetch each cell's model.pt; off for big grids (stays in S3)")
    runtime_limit_factor: float = Field(3.0, gt=0, description="a pack may run this many times its expected GPU-seconds")
    runtime_limit_startup_s: float = Field(900.0, ge=0, description="... plus this, for start-up and data loading")
    runtime_limit_s: float | None = Field(None, gt=0, description="a fixed runtime limit per pack instead")
    checkpoint_every_s: float = Field(
        CHECKPOINT_EVERY_S, ge=0, description="the trainer's checkpoint cadence in S3 (bounds upload GB per hour)")

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, v: str) -> str:
        if not _BUCKET.match(v):
            raise ValueError(f"{v!r}: not an S3 bucket name (3-63 lowercase letters, digits, '.', '-')")
        return v

    @field_validator("prefix", "grid_prefix")
    @classmethod
    def _key_prefix(cls, v: str | None) -> str | None:
        if v is not None and not all(_KEY_PART.match(p) and p not in (".", "..") for p in v.strip("/").split("/")):
            raise ValueError(f"{v!r}: use folder names of letters, digits, _ . = + - joined by '/' (no '..')")
        return v

    @classmethod
    def parse(cls, ecs: dict[str, Any]) -> EcsSettings:
        """Validate the ``ecs`` dict; every problem on one line each, as ``ecs.field: problem``."""
        try:
            return cls.model_validate({k: v for k, v in ecs.items() if v not in ("", None)})
        except ValidationError as e:
            lines = [f"ecs.{'.'.join(map(str, err['loc'])) or '(settings)'}: {err['msg'].removeprefix('Value error, ')}"
                     for err in e.errors()]
            raise ValueError("\n".join(lines)) from None


def parse_ecs_pairs(pairs: list[str]) -> dict[str, Any]:
    """CLI ``--ecs KEY=VALUE`` pairs -> the flow's ``ecs`` dict, validated (lists comma-separated)."""
    raw: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--ecs {pair}: expected KEY=VALUE, e.g. --ecs cluster=autolabel")
        raw[key.strip().replace("-", "_")] = value.strip()
    for key in ("subnets", "security_groups"):
        if key in raw:
            raw[key] = [v.strip() for v in raw[key].split(",") if v.strip()]
    return EcsSettings.parse(raw).model_dump(exclude_defaults=True)
