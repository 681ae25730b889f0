"""What is in the store's backup namespace: every backup of every target and what is known
about it. Only what dbops wrote is listed (``backups/<target>/<backup_id>/`` with a well-formed
id and dbops's own file names); anything else in the store is someone else's and ignored.

States:
  valid         the manifest authenticates for this folder and the data object has its size
  writing       no manifest yet and a writer holds the lease (or wrote within LEFTOVER_AGE)
  incomplete    no manifest, no live writer, nothing written for LEFTOVER_AGE: a dead writer's leftovers
  unknown       a manifest exists but cannot be read or trusted (store error, altered, other
                folder's, key not configured), or the data object differs from the manifest
  missing_data  the manifest authenticates but its data object is gone
Retention acts only on what it positively knows; unknown and missing_data stop it for the target.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

from dbops_pipelines.backup.crypto import BackupKey
from dbops_pipelines.backup.manifest import (DATA_NAME, LEASE_NAME, MANIFEST_NAME, OWN_NAMES, BackupManifest,
                                             manifest_key, parse_backup_id, read_manifest)
from dbops_pipelines.backup.retention import BackupRecord
from dbops_pipelines.errors import DbopsError, IntegrityError, StorageError
from dbops_pipelines.storage.base import BackupStore, ObjectInfo
from dbops_pipelines.storage.namespaces import BACKUPS, backups_of

VALID, WRITING, INCOMPLETE, UNKNOWN, MISSING_DATA = "valid", "writing", "incomplete", "unknown", "missing_data"
LEASE_TTL = timedelta(minutes=15)     # a writer renews its lease far more often (engine.LEASE_RENEW)
LEFTOVER_AGE = timedelta(days=1)      # no writer goes this long without writing anything


@dataclass(frozen=True)
class BackupEntry:
    backup_id: str
    target: str
    state: str
    started_at: datetime
    keys: tuple[str, ...]            # dbops's own objects under the backup's prefix
    manifest: BackupManifest | None  # set only when authenticated
    size_bytes: int = 0
    error: DbopsError | None = field(default=None, compare=False)  # why the state is unknown / missing_data
    verification: dict | None = None  # the newest authenticated verification's summary (set by inventory)

    @property
    def problem(self) -> str | None:
        return self.error.message if self.error else None

    @property
    def valid(self) -> bool:
        return self.state == VALID

    @property
    def status(self) -> str:  # the listing's word for the state
        return self.state

    @property
    def damaged(self) -> bool:
        """The manifest authenticates, but the data object is missing or not the one it describes."""
        return self.manifest is not None and not self.valid

    @property
    def kind(self) -> str | None:
        return self.manifest.kind if self.manifest else None

    @property
    def verified(self) -> bool:
        """Verified means one thing everywhere: a valid backup whose newest authenticated
        verification passed (verification.report.VerificationReport.passed)."""
        return bool(self.valid and self.verification and self.verification["passed"])

    def with_verification(self, summary: dict | None) -> "BackupEntry":
        return replace(self, verification=summary)

    def to_record(self) -> BackupRecord:
        return BackupRecord(self.backup_id, self.target, self.started_at, self.valid, self.verified,
                            self.kind or "full", self.state, self.problem)

    def to_dict(self) -> dict:
        m = self.manifest
        return {
            "id": self.backup_id, "target": self.target, "status": self.state, "problem": self.problem,
            "kind": m.kind if m else None,
            "started_at": self.started_at.isoformat(),
            "finished_at": m.finished_at if m else None,
            "size_bytes": m.stored_bytes if m else self.size_bytes,
            "raw_bytes": m.raw_bytes if m else None,
            "location": m.location if m else None,
            "sha256": m.sha256 if m else None,
            "key_id": m.key_id if m else None,
            "tables": len(m.table_rows) if m else None,
            "total_rows": m.total_rows if m else None,
            "verified": self.verified,
            "verification": self.verification,
        }


def read_entry(store: BackupStore, keys: list[BackupKey], target: str, backup_id: str, started: datetime,
           objs: dict[str, ObjectInfo], now: datetime) -> BackupEntry:
    keyset = tuple(sorted(o.key for o in objs.values()))
    size = sum(o.size for o in objs.values())
    base = BackupEntry(backup_id, target, UNKNOWN, started, keyset, None, size)
    if MANIFEST_NAME not in objs:
        newest = max(o.modified for o in objs.values())
        lease = objs.get(LEASE_NAME)
        alive = (lease is not None and now - lease.modified < LEASE_TTL) or now - newest < LEFTOVER_AGE
        return replace(base, state=WRITING if alive else INCOMPLETE)
    try:
        manifest = read_manifest(store.get_bytes(manifest_key(target, backup_id)), keys, target, backup_id)
    except DbopsError as exc:  # store error, altered/foreign/malformed manifest, key not configured
        return replace(base, error=exc)
    data = objs.get(DATA_NAME)
    if data is None:
        return replace(base, state=MISSING_DATA, manifest=manifest, error=IntegrityError(
            f"backup {backup_id}: the manifest authenticates but its data object is missing",
            "something deleted it outside dbops: find out what, and take a new backup now"))
    if data.size != manifest.stored_bytes:
        return replace(base, manifest=manifest, error=IntegrityError(
            f"backup {backup_id}: the data object has {data.size} bytes, its manifest says {manifest.stored_bytes}",
            "do not use this backup; find out what changed it in the store"))
    return replace(base, state=VALID, manifest=manifest, started_at=datetime.fromisoformat(manifest.started_at))


def group_objects(objects: Iterable[ObjectInfo]) -> dict[tuple[str, str], dict[str, ObjectInfo]]:
    groups: dict[tuple[str, str], dict[str, ObjectInfo]] = {}
    for obj in objects:
        parts = obj.key[len(BACKUPS):].split("/") if obj.key.startswith(BACKUPS) else []
        if len(parts) != 3 or parts[2] not in OWN_NAMES:
            continue
        target, backup_id, name = parts
        parsed = parse_backup_id(backup_id)
        if parsed is None or parsed[0] != target:
            continue  # not a dbops backup folder: never listed, never deleted
        groups.setdefault((target, backup_id), {})[name] = obj
    return groups


def list_backups(store: BackupStore, keys: list[BackupKey], target: str | None = None,
                 now: datetime | None = None) -> list[BackupEntry]:
    """Newest first. Every entry carries its state (see the module docstring)."""
    now = now or datetime.now(timezone.utc)
    entries = [read_entry(store, keys, tgt, bid, parse_backup_id(bid)[1], objs, now)
               for (tgt, bid), objs in group_objects(store.list(backups_of(target))).items()]
    return sorted(entries, key=lambda e: (e.started_at, e.backup_id), reverse=True)


def find_backup(store: BackupStore, keys: list[BackupKey], backup_id: str, damaged_ok: bool = False) -> BackupEntry:
    """One valid backup by id: lists only its own prefix and reads only its own manifest;
    raises a StorageError/IntegrityError that says why when it is not valid. ``damaged_ok``
    also returns a backup whose manifest authenticates but whose data is damaged or missing
    (verification records that as a failed verification)."""
    parsed = parse_backup_id(backup_id)
    objs = group_objects(store.list(backups_of(parsed[0]) + backup_id + "/")) if parsed else {}
    if not objs:
        raise StorageError(f"backup {backup_id} not found", "run `dbops backups list` to see the backups in the store")
    [((tgt, bid), found)] = objs.items()
    entry = read_entry(store, keys, tgt, bid, parsed[1], found, datetime.now(timezone.utc))
    if entry.state == VALID or (damaged_ok and entry.manifest is not None):
        return entry
    if entry.state in (WRITING, INCOMPLETE):
        raise StorageError(f"backup {backup_id} is {entry.state} (no manifest)", "it cannot be restored; pick a valid backup from `dbops backups list`")
    raise entry.error


def delete_backup(store: BackupStore, entry: BackupEntry) -> None:
    """Manifest first: an interrupted delete leaves an incomplete backup, never a valid one with
    missing data. Only dbops's own objects of this backup are deleted."""
    ordered = sorted(entry.keys, key=lambda k: not k.endswith("/" + MANIFEST_NAME))
    for key in ordered:
        store.delete(key)
