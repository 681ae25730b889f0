"""The cluster identity guard: ``archive.info`` names the cluster that owns the archive (system
identifier, WAL segment size), and WAL of any other cluster is refused (see the package docstring)."""

from __future__ import annotations

# The crypto module is imported where it is used: see objects.py.
import json
import os
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from dbops_pipelines.errors import DbopsError, IntegrityError, ObjectExists, StorageError
from dbops_pipelines.wal.naming import cluster_prefix

if TYPE_CHECKING:
    from dbops_pipelines.backup.crypto import BackupKey
    from dbops_pipelines.context import FleetContext
    from dbops_pipelines.storage.base import BackupStore
    from dbops_pipelines.wal.archive.spool import Spool

INFO_FORMAT = "wal-archive-info"
INFO_VERSION = 1


class ForeignCluster(DbopsError):
    """The archive belongs to a cluster with another system identifier (or segment size)."""


@dataclass(frozen=True)
class ClusterIdentity:
    system_identifier: str
    segment_size: int

    def text(self) -> str:
        return f"{self.system_identifier} {self.segment_size}"


def find_data_dir(wal_path: Path) -> Path:
    """The data directory: the working directory (PostgreSQL runs archive_command there), else
    the directory above the file's pg_wal."""
    cwd = Path(os.getcwd())
    if (cwd / "global" / "pg_control").exists():
        return cwd
    if wal_path.parent.name == "pg_wal" and (wal_path.parent.parent / "global" / "pg_control").exists():
        return wal_path.parent.parent
    raise DbopsError(f"cannot find the data directory of {wal_path} (no global/pg_control in {cwd})",
                     "run wal-push from the data directory, as PostgreSQL does for archive_command")


def read_identity(data_dir: Path, pg_bin_dir: str | None = None) -> ClusterIdentity:
    """System identifier and WAL segment size of the cluster in ``data_dir`` (pg_controldata)."""
    from dbops_pipelines.pgtools import find_binary

    try:
        major = int((data_dir / "PG_VERSION").read_text().strip().split(".")[0])
    except (OSError, ValueError):
        major = None
    binary = find_binary("pg_controldata", major, pg_bin_dir, error=DbopsError)
    try:
        proc = subprocess.run([str(binary), "-D", str(data_dir)], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "LC_ALL": "C", "LANG": "C"})
    except (OSError, subprocess.SubprocessError) as exc:
        raise DbopsError(f"cannot run {binary}: {exc}", "check the PostgreSQL installation (defaults.pg_bin_dir)") from None
    sysid = re.search(r"^Database system identifier:\s*(\d+)", proc.stdout, re.M)
    segsize = re.search(r"^Bytes per WAL segment:\s*(\d+)", proc.stdout, re.M)
    if proc.returncode != 0 or not sysid or not segsize:
        raise DbopsError(f"cannot read the cluster's identity with {binary} -D {data_dir}: "
                         f"{(proc.stderr or proc.stdout).strip()[:300]}",
                         "run wal-push as the server's OS user from its data directory")
    return ClusterIdentity(sysid[1], int(segsize[1]))


def info_key(cluster: str) -> str:
    return f"{cluster_prefix(cluster)}archive.info"


def read_archive_info(store: BackupStore, keys: Iterable[BackupKey], cluster: str) -> dict | None:
    """The authenticated archive.info body, or None if the archive has none yet."""
    key = info_key(cluster)
    if store.stat(key) is None:
        return None
    from dbops_pipelines.backup.crypto import open_record

    opened = open_record(store.get_bytes(key), keys, INFO_FORMAT, cluster_prefix(cluster), f"{store.location(key)}")
    try:
        return json.loads(opened.body)
    except ValueError:
        raise IntegrityError(f"{store.location(key)} is not valid JSON", "check who can write to the store") from None


def check_identity(ctx: FleetContext, cluster: str, local: ClusterIdentity, spool: Spool | None = None) -> None:
    """Refuse WAL of a cluster other than the archive's owner; the first push names the owner."""
    if spool is not None and spool.identity() == local.text():
        return
    store, key = ctx.store, info_key(cluster)
    info = read_archive_info(store, ctx.read_keys, cluster)
    if info is None:
        from dbops_pipelines.backup.crypto import seal_record

        body = json.dumps({"cluster": cluster, "system_identifier": local.system_identifier,
                           "wal_segment_size": local.segment_size,
                           "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}, sort_keys=True).encode()
        try:
            store.put_bytes(key, seal_record(ctx.write_key, INFO_FORMAT, INFO_VERSION, cluster_prefix(cluster), body))
        except ObjectExists:
            pass  # another pusher was first: check against what it wrote
        info = read_archive_info(store, ctx.read_keys, cluster)
        if info is None:
            raise StorageError(f"{store.location(key)} was written but cannot be read back", "check the store")
    if str(info.get("system_identifier")) != local.system_identifier:
        raise ForeignCluster(
            f"the WAL archive {store.location(cluster_prefix(cluster))} belongs to the cluster with system identifier "
            f"{info.get('system_identifier')}, but this one has {local.system_identifier}: refused, nothing stored",
            "a re-initialised cluster, or a copy restored elsewhere, must not write into the original's archive: give "
            "this cluster another name (targets.<name>.cluster) or turn archiving off on the copy; if the old "
            "archive is no longer needed, move it away before archiving into this name")
    if int(info.get("wal_segment_size", 0)) != local.segment_size:
        raise ForeignCluster(
            f"the WAL archive {store.location(cluster_prefix(cluster))} holds segments of {info.get('wal_segment_size')} "
            f"bytes, but this cluster writes {local.segment_size}: refused", "archive this cluster under another name")
    if spool is not None:
        spool.record_identity(local.text())
