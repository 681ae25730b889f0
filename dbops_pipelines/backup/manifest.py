"""The backup manifest: the record every later step (check, verification, retention, listing)
reads. It is written last, after the data object is complete, so a backup without a manifest is
never valid. Verification writes its results beside it, never into it.

Stored format (version 2): a sealed record (crypto.seal_record) whose MAC covers the body's
bytes exactly as stored and the backup's place (target and id), so a manifest can gain fields
without invalidating old backups and a manifest copied into another backup's folder is refused.
Version 1 manifests (MAC over a re-serialised dataclass, in the old store layout) are read only
to migrate them (backup/migrate.py).
"""

from __future__ import annotations

import hmac
import json
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from dbops_pipelines.backup.crypto import BackupKey, manifest_mac, open_record, seal_record
from dbops_pipelines.errors import EncryptionKeyError, IntegrityError
from dbops_pipelines.storage.namespaces import backups_of

FORMAT = "dbops-backup-manifest"
FORMAT_VERSION = 2
DATA_NAME = "dump.pgc.zst.aes"
MANIFEST_NAME = "manifest.json"
LEASE_NAME = "writing.lease"        # present while a backup is being written (engine renews it)
OWN_NAMES = (DATA_NAME, MANIFEST_NAME, LEASE_NAME)  # all a backup folder may hold that dbops wrote


def backup_prefix(target: str, backup_id: str) -> str:
    return f"{backups_of(target)}{backup_id}/"


def data_key(target: str, backup_id: str) -> str:
    return backup_prefix(target, backup_id) + DATA_NAME


def manifest_key(target: str, backup_id: str) -> str:
    return backup_prefix(target, backup_id) + MANIFEST_NAME


def lease_key(target: str, backup_id: str) -> str:
    return backup_prefix(target, backup_id) + LEASE_NAME


def new_backup_id(target: str, started_at: datetime, suffix: str) -> str:
    """Sortable by time within a target: ``app-20261124T020000Z-1a2b``."""
    return f"{target}-{started_at.strftime('%Y%m%dT%H%M%SZ')}-{suffix}"


_ID = re.compile(r"(?P<target>[a-z][a-z0-9_]{0,62})-(?P<stamp>\d{8}T\d{6}Z)-[0-9a-f]{4,32}")


def parse_backup_id(backup_id: str) -> tuple[str, datetime] | None:
    """(target, start time) of a well-formed backup id, else None: anything else is not ours."""
    m = _ID.fullmatch(backup_id)
    if not m:
        return None
    return m["target"], datetime.strptime(m["stamp"], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)


class ManifestBody:
    """A manifest dataclass as the JSON body of a sealed record, and back (logical and base backups)."""

    def body(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def from_body(cls, data: bytes):
        raw = json.loads(data)
        if not isinstance(raw, dict):
            raise ValueError("a manifest body is a JSON object")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in raw.items() if k in known})  # fields added later are ignored


@dataclass
class BackupManifest(ManifestBody):
    backup_id: str
    target: str
    kind: str                       # full | schema | tables
    database: str
    server: str                     # host:port, never credentials
    server_version: str
    pg_dump_version: str
    started_at: str                 # ISO 8601 UTC
    finished_at: str
    raw_bytes: int                  # pg_dump output before compression
    stored_bytes: int
    sha256: str                     # of the stored (encrypted) object
    object_key: str
    location: str
    compression: str
    encryption: str
    key_id: str
    table_rows: dict[str, int]      # exact rows per table, in the dump's snapshot
    schema_fingerprint: dict
    table_checksums: dict[str, str] = field(default_factory=dict)  # md5 of rows, small tables only
    selected_tables: list[str] = field(default_factory=list)
    excluded_table_data: list[str] = field(default_factory=list)
    pg_dump_warnings: list[str] = field(default_factory=list)
    format_version: int = FORMAT_VERSION

    @property
    def total_rows(self) -> int:
        return sum(self.table_rows.values())

    @property
    def duration_seconds(self) -> float:
        return (datetime.fromisoformat(self.finished_at) - datetime.fromisoformat(self.started_at)).total_seconds()

    @property
    def partial(self) -> bool:
        return self.kind != "full"



def seal_manifest(manifest: BackupManifest, key: BackupKey) -> bytes:
    return seal_record(key, FORMAT, FORMAT_VERSION, f"{manifest.target}/{manifest.backup_id}", manifest.body())


def read_manifest(data: bytes, keys: list[BackupKey], target: str, backup_id: str, expected_object_key: str | None = None) -> BackupManifest:
    """Authenticate and parse the manifest stored for ``target``/``backup_id``. Raises
    IntegrityError if it is altered, unsigned, malformed or belongs to another backup, and
    EncryptionKeyError if its key is not configured: in both cases its state is unknown."""
    label = f"the manifest of backup {backup_id}"
    if data.startswith(b'{"format": '):
        opened = open_record(data, keys, FORMAT, f"{target}/{backup_id}", label)
        try:
            manifest = BackupManifest.from_body(opened.body)
        except (ValueError, TypeError) as exc:
            raise IntegrityError(f"{label} authenticates but cannot be parsed: {exc}", "report this; do not rely on this backup") from None
        if manifest.key_id != opened.key_id:
            raise IntegrityError(f"{label} names key {manifest.key_id} but is signed with {opened.key_id}", "do not trust this record")
    else:
        manifest = read_v1_manifest(data, keys, label)
    expected_object_key = expected_object_key or data_key(target, backup_id)
    if (manifest.target, manifest.backup_id, manifest.object_key) != (target, backup_id, expected_object_key):
        raise IntegrityError(
            f"{label} describes backup {manifest.backup_id} of {manifest.target} ({manifest.object_key}), not the one in its folder",
            "a manifest was copied or moved by hand; do not trust it",
        )
    return manifest


# The fields of a version 1 manifest, frozen: its MAC covers exactly these.
V1_FIELDS = ("backup_id", "target", "kind", "database", "server", "server_version", "pg_dump_version", "started_at",
             "finished_at", "raw_bytes", "stored_bytes", "sha256", "object_key", "location", "compression", "encryption",
             "key_id", "table_rows", "schema_fingerprint", "table_checksums", "selected_tables", "excluded_table_data",
             "pg_dump_warnings", "format_version")


def read_v1_manifest(data: bytes, keys: list[BackupKey], label: str) -> BackupManifest:
    try:
        raw = json.loads(data)
        payload = {k: raw[k] for k in V1_FIELDS}
    except (ValueError, TypeError, KeyError) as exc:
        raise IntegrityError(f"{label} is malformed: {type(exc).__name__}", "do not trust this record; check who can write to the store") from None
    by_id = {k.key_id: k for k in keys}
    if payload["key_id"] not in by_id:
        raise EncryptionKeyError(f"{label} is signed with key id {payload['key_id']}, which no configured key matches",
                                 "set the key it was written with (encryption.key_env or encryption.previous_key_envs)")
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    mac = raw.get("mac")
    if not isinstance(mac, str) or not hmac.compare_digest(manifest_mac(by_id[payload["key_id"]], canonical), mac):
        raise IntegrityError(f"{label} has been altered or is unsigned", "do not trust this record; check who can write to the store")
    return BackupManifest(**payload)
