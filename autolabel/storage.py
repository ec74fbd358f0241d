"""Where cells and datasets live: a local folder or an ``s3://bucket/prefix``.

boto3 reads credentials and region from its default chain and honours
``AWS_ENDPOINT_URL`` (and ``AWS_ENDPOINT_URL_S3``), which is how the tests point
it at a local moto server. Nothing here writes credentials anywhere.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path, PurePosixPath

# S3 bucket naming rules (3-63 chars, lowercase, digits, dots, hyphens).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# Keys we create: no traversal, no empty segments, a conservative alphabet.
_KEY_SEGMENT = re.compile(r"^[A-Za-z0-9_.=+-]+$")


class StorageError(ValueError):
    """A bad URI or a missing object; the message names it."""


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``, refusing traversal and odd keys."""
    if not is_s3(uri):
        raise StorageError(f"{uri}: not an s3:// URI")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not _BUCKET.match(bucket):
        raise StorageError(f"{uri}: invalid S3 bucket name {bucket!r}")
    key = key.strip("/")
    for seg in key.split("/") if key else []:
        if seg in ("", ".", "..") or not _KEY_SEGMENT.match(seg):
            raise StorageError(f"{uri}: invalid key segment {seg!r} (letters, digits, _ . = + - only)")
    return bucket, key


def join(uri: str, *parts: str) -> str:
    """Join path segments onto a local path or s3 URI (validated for s3)."""
    if is_s3(uri):
        out = uri.rstrip("/") + "/" + "/".join(p.strip("/") for p in parts)
        split_s3(out)
        return out
    return str(Path(uri, *parts))


@lru_cache(maxsize=None)
def _client():
    import boto3  # deferred: a local run never needs it

    return boto3.client("s3")


def s3_client():
    """The shared S3 client (default credential chain, AWS_ENDPOINT_URL honoured)."""
    return _client()


def list_keys(uri: str, client=None) -> list[str]:
    """Every object under ``uri``, as keys relative to it; any that would leave the prefix
    (an empty, ``.`` or ``..`` segment) is left out."""
    bucket, prefix = split_s3(uri)
    pages = (client or s3_client()).get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix + "/" if prefix else "")
    rels = (obj["Key"][len(prefix) :].lstrip("/") for page in pages for obj in page.get("Contents", []))
    return [rel for rel in rels if rel and not any(seg in ("", ".", "..") for seg in PurePosixPath(rel).parts)]


def download_prefix(uri: str, dest: Path) -> list[Path]:
    """Copy every object under ``uri`` into ``dest``, keeping relative paths."""
    bucket, prefix = split_s3(uri)
    dest.mkdir(parents=True, exist_ok=True)
    got: list[Path] = []
    for rel in list_keys(uri):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        s3_client().download_file(bucket, "/".join(p for p in (prefix, rel) if p), str(target))
        got.append(target)
    return got


def exists(uri: str, client=None) -> bool:
    """Whether the object exists, asked by listing: a role allowed s3:ListBucket only on its
    prefix gets 403, not 404, from a GET or HEAD of a missing key."""
    bucket, key = split_s3(uri)
    page = (client or s3_client()).list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
    return any(obj["Key"] == key for obj in page.get("Contents", []))


def read_bytes(uri: str, client=None) -> bytes | None:
    """One object's content; None if it does not exist (other S3 errors propagate)."""
    if not exists(uri, client):
        return None
    from botocore.exceptions import ClientError

    bucket, key = split_s3(uri)
    try:
        return (client or s3_client()).get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as e:  # deleted between the listing and the read
        if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def download_file(uri: str, dest: Path) -> bool:
    """Fetch one object; False if it does not exist."""
    if not exists(uri):
        return False
    bucket, key = split_s3(uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    s3_client().download_file(bucket, key, str(dest))
    return True


def upload_file(path: Path, uri: str) -> None:
    bucket, key = split_s3(uri)
    s3_client().upload_file(str(path), bucket, key)


def delete(uri: str | Path) -> None:
    """Remove one object (s3) or file (local); a missing one is fine."""
    if is_s3(str(uri)):
        bucket, key = split_s3(str(uri))
        s3_client().delete_object(Bucket=bucket, Key=key)
    else:
        Path(uri).unlink(missing_ok=True)

