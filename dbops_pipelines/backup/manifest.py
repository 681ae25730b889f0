"""The backup manifest: the record every later step (check, verification, retention, listing)
reads. It is written last, after the data object is complete, so a backup without a manifest is
never valid. Verification writes its results beside it, never into it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime

FORMAT_VERSION = 1
DATA_NAME = "dump.pgc.zst.aes"
MANIFEST_NAME = "manifest.json"


def backup_prefix(target: str, backup_id: str) -> str:
    return f"{target}/{backup_id}/"


def data_key(target: str, backup_id: str) -> str:
    return backup_prefix(target, backup_id) + DATA_NAME


def manifest_key(target: str, backup_id: str) -> str:
    return backup_prefix(target, backup_id) + MANIFEST_NAME


def new_backup_id(target: str, started_at: datetime, suffix: str) -> str:
    """Sortable by time within a target: ``app-20261124T020000Z-1a2b``."""
    return f"{target}-{started_at.strftime('%Y%m%dT%H%M%SZ')}-{suffix}"


@dataclass
class BackupManifest:
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
    mac: str | None = None          # HMAC of everything else, under the backup key (see crypto.manifest_mac)

    @property
    def total_rows(self) -> int:
        return sum(self.table_rows.values())

    @property
    def duration_seconds(self) -> float:
        return (datetime.fromisoformat(self.finished_at) - datetime.fromisoformat(self.started_at)).total_seconds()

    def signed_payload(self) -> bytes:
        """The canonical bytes the MAC covers: every field but the MAC itself."""
        body = {k: v for k, v in asdict(self).items() if k != "mac"}
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "BackupManifest":
        raw = json.loads(data)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in raw.items() if k in known})
