"""What is in the store: every backup of every target, valid (manifest present) or not."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from dbops_pipelines.backup.manifest import MANIFEST_NAME, BackupManifest, backup_prefix, manifest_key
from dbops_pipelines.backup.retention import BackupRecord
from dbops_pipelines.errors import StorageError
from dbops_pipelines.storage.base import BackupStore, ObjectInfo
from dbops_pipelines.verification.report import latest_reports


@dataclass(frozen=True)
class BackupEntry:
    backup_id: str
    target: str
    status: str                      # valid | incomplete
    started_at: datetime
    keys: tuple[str, ...]            # every object under the backup's prefix
    manifest: BackupManifest | None
    size_bytes: int = 0              # all objects under the prefix
    verification: dict | None = None  # summary of the newest verification report, if any

    @property
    def verified(self) -> bool:
        return bool(self.valid and self.verification and self.verification["passed"])

    @property
    def valid(self) -> bool:
        return self.status == "valid"

    def to_record(self) -> BackupRecord:
        full = self.manifest is None or self.manifest.kind == "full"
        return BackupRecord(self.backup_id, self.target, self.started_at, self.valid, self.verified, full)

    def to_dict(self) -> dict:
        m = self.manifest
        return {
            "id": self.backup_id, "target": self.target, "status": self.status,
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
            "verification": self.verification,
        }


def _started_from_id(backup_id: str, fallback: datetime) -> datetime:
    # ids look like <target>-<YYYYmmddTHHMMSSZ>-<hex>; fall back to the object's mtime.
    try:
        stamp = backup_id.rsplit("-", 2)[-2]
        return datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    except (IndexError, ValueError):
        return fallback


def _entry(store: BackupStore, tgt: str, bid: str, objs: list[ObjectInfo], report=None) -> BackupEntry:
    """One backup from the objects under its prefix; valid only if its manifest reads."""
    manifest = None
    if any(o.key.endswith("/" + MANIFEST_NAME) for o in objs):
        try:
            manifest = BackupManifest.from_json(store.get_bytes(manifest_key(tgt, bid)))
        except (StorageError, ValueError, TypeError):
            manifest = None
    started = datetime.fromisoformat(manifest.started_at) if manifest else _started_from_id(bid, min(o.modified for o in objs))
    verification = None if report is None else {
        "passed": report.passed, "outcome": report.outcome, "verified_at": report.verified_at,
        "run_id": report.run_id, "rto_seconds": report.rto_seconds, "summary": report.summary(),
    }
    return BackupEntry(bid, tgt, "valid" if manifest else "incomplete", started,
                       tuple(sorted(o.key for o in objs)), manifest, sum(o.size for o in objs), verification)


def list_backups(store: BackupStore, target: str | None = None) -> list[BackupEntry]:
    """Newest first. A backup whose manifest cannot be read is reported as incomplete.
    Each entry carries the outcome of its newest restore verification."""
    reports = latest_reports(store, target)
    groups: dict[tuple[str, str], list[ObjectInfo]] = {}
    for obj in store.list(f"{target}/" if target else ""):
        parts = obj.key.split("/")
        if len(parts) < 3 or parts[0].startswith("_"):  # _verifications/ and other non-backup records
            continue
        groups.setdefault((parts[0], parts[1]), []).append(obj)
    entries = [_entry(store, tgt, bid, objs, reports.get(bid)) for (tgt, bid), objs in groups.items()]
    return sorted(entries, key=lambda e: (e.started_at, e.backup_id), reverse=True)


def find_backup(store: BackupStore, backup_id: str) -> BackupEntry:
    """One backup by id: lists only its own prefix and reads only its own manifest."""
    target = backup_id.rsplit("-", 2)[0] if backup_id.count("-") >= 2 else None
    objs = store.list(backup_prefix(target, backup_id)) if target else []
    if objs:
        entry = _entry(store, target, backup_id, objs)
        if not entry.valid:
            raise StorageError(f"backup {backup_id} is incomplete (no manifest)", "it cannot be restored; pick a valid backup from `dbops backups list`")
        return entry
    raise StorageError(f"backup {backup_id} not found", "run `dbops backups list` to see the backups in the store")


def delete_backup(store: BackupStore, entry: BackupEntry) -> None:
    """Manifest first: an interrupted delete leaves an incomplete backup, never a valid one with missing data."""
    ordered = sorted(entry.keys, key=lambda k: not k.endswith(MANIFEST_NAME))
    for key in ordered:
        store.delete(key)
