"""AWS sessions and client settings shared by the ECS runner and the stack's pricing.

Credentials come from a prefect-aws ``AwsCredentials`` block when one is named, else from boto3's
default chain; ``AWS_ENDPOINT_URL`` (and ``AWS_ENDPOINT_URL_<SERVICE>``) is honoured by botocore
itself, which is how the tests point every client at local servers.
"""

from __future__ import annotations

import functools
from typing import Any

# botocore's adaptive mode retries throttling and rate-limits the client itself; the runner's own
# loop around run_task (flows.ecs.runner.EcsRunner.launch_tries) covers the throttling that outlasts it.
BOTO_RETRIES: dict[str, Any] = {"mode": "adaptive", "max_attempts": 8}
# Reads made before anything launches (the dry run too): answer quickly or say why.
QUICK_TIMEOUT_S = 5.0


def aws_session(credentials_block: str | None = None):
    """A boto3 session: from a prefect-aws ``AwsCredentials`` block if named, else the default chain.

    Sessions of the default chain share this process's parsed service models (:func:`service_models`).
    """
    import boto3
    import botocore.session

    if not credentials_block:
        loader = service_models()
        core = botocore.session.get_session()
        core.register_component("data_loader", loader)
        session = boto3.Session(botocore_session=core)
        loader.search_paths[:] = list(dict.fromkeys(loader.search_paths))  # boto3 adds its data path each time
        return session
    from prefect_aws import AwsCredentials  # deferred: only the flow side needs Prefect

    return AwsCredentials.load(credentials_block).get_boto3_session()


@functools.cache
def service_models():
    """One botocore loader for the process: each session would otherwise parse the JSON models of
    its services again (ec2's alone is megabytes). A session and its ecs, s3, logs and ec2 clients
    cost 0.25-0.28 s with a loader of its own and 0.03 s with this one once warm (2-core machine,
    2026-12-06). Its caches hold only botocore's own data files, the same for every session."""
    import botocore.session
    from botocore.loaders import create_loader

    return create_loader(botocore.session.get_session().get_config_variable("data_path"))  # AWS_DATA_PATH


def client_config(region: str | None, quick: bool = False):
    """botocore settings for this project's clients: adaptive retries, or two quick tries."""
    from botocore.config import Config

    if quick:
        return Config(region_name=region, connect_timeout=QUICK_TIMEOUT_S, read_timeout=QUICK_TIMEOUT_S,
                      retries={"mode": "standard", "max_attempts": 2})
    return Config(region_name=region, retries=dict(BOTO_RETRIES))
