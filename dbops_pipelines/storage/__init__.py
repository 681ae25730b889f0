"""Backup stores: a local directory or S3, behind one interface (see base.BackupStore)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from dbops_pipelines.storage.base import BackupStore, ObjectInfo, StoredObject

__all__ = ["BackupStore", "ObjectInfo", "StoredObject", "open_store"]


def open_store(url: str, s3_endpoint_url: str | None = None, s3_region: str = "us-east-1") -> BackupStore:
    """``file:///abs/path`` or ``s3://bucket/prefix``."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        from dbops_pipelines.storage.local import LocalStore

        return LocalStore(Path(parts.netloc + parts.path) if parts.netloc not in ("", "localhost") else Path(parts.path))
    if parts.scheme == "s3":
        from dbops_pipelines.storage.s3 import S3Store

        return S3Store(parts.netloc, parts.path, endpoint_url=s3_endpoint_url, region=s3_region)
    raise ValueError(f"unsupported storage url {url!r}: use file:// or s3://")


