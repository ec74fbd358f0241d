"""AWS sessions and client settings shared by the ECS runner and the stack's pricing.

Credentials come from a prefect-aws ``AwsCredentials`` block when one is named, else from boto3's
default chain; ``AWS_ENDPOINT_URL`` (and ``AWS_ENDPOINT_URL_<SERVICE>``) is honoured by botocore
itself, which is how the tests point every client at local servers.
"""

from __future__ import annotations

from typing import Any

# botocore's adaptive mode retries throttling and rate-limits the client itself; the runner's own
# loop around run_task (flows.ecs.runner.EcsRunner.launch_tries) covers the throttling that outlasts it.
BOTO_RETRIES: dict[str, Any] = {"mode": "adaptive", "max_attempts": 8}
# Reads made before anything launches (the dry run too): answer quickly or say why.
QUICK_TIMEOUT_S = 5.0


def aws_session(credentials_block: str | None = None):
    """A boto3 session: from a prefect-aws ``AwsCredentials`` block if named, else the default chain."""
    import boto3

    if not credentials_block:
        return boto3.Session()
    from prefect_aws import AwsCredentials  # deferred: only the flow side needs Prefect

    return AwsCredentials.load(credentials_block).get_boto3_session()


def client_config(region: str | None, quick: bool = False):
    """botocore settings for this project's clients: adaptive retries, or two quick tries."""
    from botocore.config import Config

    if quick:
        return Config(region_name=region, connect_timeout=QUICK_TIMEOUT_S, read_timeout=QUICK_TIMEOUT_S,
                      retries={"mode": "standard", "max_attempts": 2})
    return Config(region_name=region, retries=dict(BOTO_RETRIES))
