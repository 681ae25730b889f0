"""A base backup's id, its keys in the store, and its manifest: the sealed record, written last,
that makes the base backup valid (see the package docstring)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

from dbops_pipelines.backup.crypto import BackupKey, open_record, seal_record
from dbops_pipelines.backup.manifest import ManifestBody, new_backup_id
from dbops_pipelines.errors import IntegrityError
from dbops_pipelines.wal.naming import base_backup_prefix, cluster_prefix

FORMAT = "dbops-base-backup-manifest"
FORMAT_VERSION = 1
DATA_NAME = "base.tar.zst.aes"
MANIFEST_NAME = "manifest.json"
LEASE_NAME = "writing.lease"
OWN_NAMES = (DATA_NAME, MANIFEST_NAME, LEASE_NAME)


def cluster_safe(cluster: str) -> str:
    """The cluster's name as one path component: the folder under wal/ (naming.cluster_prefix)."""
    return cluster_prefix(cluster)[len("wal/"):-1]


def new_base_backup_id(cluster: str, started_at: datetime, suffix: str) -> str:
    """``<cluster-safe>-<UTC stamp>-<hex>``, sortable by time within a cluster."""
    return new_backup_id(cluster_safe(cluster), started_at, suffix)


_ID = re.compile(r"(?P<cluster>[A-Za-z0-9._-]+)-(?P<stamp>\d{8}T\d{6}Z)-[0-9a-f]{4,32}")


def parse_base_backup_id(backup_id: str) -> tuple[str, datetime] | None:
    """(the cluster's folder name, start time) of a well-formed id, else None."""
    m = _ID.fullmatch(backup_id)
    if not m:
        return None
    return m["cluster"], datetime.strptime(m["stamp"], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)


def data_key(cluster: str, backup_id: str) -> str:
    return base_backup_prefix(cluster, backup_id) + DATA_NAME


def manifest_key(cluster: str, backup_id: str) -> str:
    return base_backup_prefix(cluster, backup_id) + MANIFEST_NAME


def lease_key(cluster: str, backup_id: str) -> str:
    return base_backup_prefix(cluster, backup_id) + LEASE_NAME


@dataclass
class BaseBackupManifest(ManifestBody):
    backup_id: str
    cluster: str                    # the config's name of the cluster (a key of clusters, or host:port)
    target: str                     # the target it was taken through (its DSN, its backup role)
    server: str                     # host:port, never credentials
    server_version: str
    pg_basebackup_version: str
    system_identifier: str          # pg_control's; a string: it is a uint64
    timeline: int                   # START TIMELINE
    start_lsn: str
    checkpoint_lsn: str
    stop_lsn: str                   # backup_manifest's WAL-Ranges end: consistent from here on
    stop_timeline: int
    start_time: str                 # ISO 8601 UTC, from backup_label (see start_time_source)
    stop_time: str                  # server clock, upper bound (package docstring)
    started_at: str                 # when dbops started and finished, its own clock
    finished_at: str
    raw_bytes: int                  # the tar stream
    stored_bytes: int
    sha256: str                     # of the stored (encrypted) object
    object_key: str
    location: str
    compression: str
    encryption: str
    key_id: str
    backup_manifest_sha256: str     # of the backup_manifest file inside the tar
    backup_manifest_bytes: int
    backup_label: str               # the file's text, as the server wrote it
    wal_ranges: list[dict] = field(default_factory=list)
    files: int = 0                  # regular files in the tar
    wal_method: str = "fetch"
    from_standby: bool = False
    start_time_source: str = "backup_label"  # or "observed" when the label's zone could not be read
    pg_basebackup_warnings: list[str] = field(default_factory=list)
    kind: str = "base"
    format_version: int = FORMAT_VERSION

    @property
    def duration_seconds(self) -> float:
        return (datetime.fromisoformat(self.finished_at) - datetime.fromisoformat(self.started_at)).total_seconds()



def _binding(cluster_folder: str, backup_id: str) -> str:
    return f"base/{cluster_folder}/{backup_id}"


def seal_base_manifest(manifest: BaseBackupManifest, key: BackupKey) -> bytes:
    return seal_record(key, FORMAT, FORMAT_VERSION, _binding(cluster_safe(manifest.cluster), manifest.backup_id), manifest.body())


def read_base_manifest(data: bytes, keys: list[BackupKey], cluster_folder: str, backup_id: str) -> BaseBackupManifest:
    """Authenticate and parse the manifest found in ``wal/<cluster_folder>/base/<backup_id>/``;
    IntegrityError if altered, malformed or another folder's, EncryptionKeyError if its key is not set."""
    label = f"the manifest of base backup {backup_id}"
    opened = open_record(data, keys, FORMAT, _binding(cluster_folder, backup_id), label)
    try:
        manifest = BaseBackupManifest.from_body(opened.body)
    except (ValueError, TypeError) as exc:
        raise IntegrityError(f"{label} authenticates but cannot be parsed: {exc}", "report this; do not rely on this base backup") from None
    if manifest.key_id != opened.key_id:
        raise IntegrityError(f"{label} names key {manifest.key_id} but is signed with {opened.key_id}", "do not trust this record")
    expected = f"wal/{cluster_folder}/base/{backup_id}/{DATA_NAME}"
    if (cluster_safe(manifest.cluster), manifest.backup_id, manifest.object_key) != (cluster_folder, backup_id, expected):
        raise IntegrityError(f"{label} describes base backup {manifest.backup_id} of {manifest.cluster}, not the one in its folder",
                             "a manifest was copied or moved by hand; do not trust it")
    return manifest
