"""Listing base backups and finding one by id, each with the backup catalog's states."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from dbops_pipelines.backup.catalog import INCOMPLETE, LEASE_TTL, LEFTOVER_AGE, MISSING_DATA, UNKNOWN, VALID, WRITING
from dbops_pipelines.backup.crypto import BackupKey
from dbops_pipelines.errors import DbopsError, IntegrityError, StorageError
from dbops_pipelines.storage.base import BackupStore, ObjectInfo
from dbops_pipelines.wal.basebackup.manifest import (DATA_NAME, LEASE_NAME, MANIFEST_NAME, OWN_NAMES, BaseBackupManifest,
                                                     cluster_safe, parse_base_backup_id, read_base_manifest)
from dbops_pipelines.wal.naming import base_backup_prefix


@dataclass(frozen=True)
class BaseBackupEntry:
    backup_id: str
    cluster: str
    state: str                        # the catalog's states: valid, writing, incomplete, unknown, missing_data
    started_at: datetime
    keys: tuple[str, ...]
    manifest: BaseBackupManifest | None   # set only when authenticated
    size_bytes: int = 0
    error: DbopsError | None = field(default=None, compare=False)

    @property
    def valid(self) -> bool:
        return self.state == VALID

    @property
    def problem(self) -> str | None:
        return self.error.message if self.error else None

    def to_dict(self) -> dict:
        m = self.manifest
        return {
            "id": self.backup_id, "cluster": self.cluster, "kind": "base", "status": self.state, "problem": self.problem,
            "target": m.target if m else None, "started_at": self.started_at.isoformat(),
            "finished_at": m.finished_at if m else None,
            "size_bytes": m.stored_bytes if m else self.size_bytes, "raw_bytes": m.raw_bytes if m else None,
            "timeline": m.timeline if m else None, "start_lsn": m.start_lsn if m else None,
            "stop_lsn": m.stop_lsn if m else None, "start_time": m.start_time if m else None,
            "stop_time": m.stop_time if m else None, "system_identifier": m.system_identifier if m else None,
            "server_version": m.server_version if m else None, "location": m.location if m else None,
            "sha256": m.sha256 if m else None, "key_id": m.key_id if m else None,
        }


def _read_entry(store: BackupStore, keys: list[BackupKey], cluster: str, folder: str, backup_id: str, started: datetime,
                objs: dict[str, ObjectInfo], now: datetime) -> BaseBackupEntry:
    base = BaseBackupEntry(backup_id, cluster, UNKNOWN, started, tuple(sorted(o.key for o in objs.values())), None,
                           sum(o.size for o in objs.values()))
    if MANIFEST_NAME not in objs:
        newest = max(o.modified for o in objs.values())
        lease = objs.get(LEASE_NAME)
        alive = (lease is not None and now - lease.modified < LEASE_TTL) or now - newest < LEFTOVER_AGE
        return replace(base, state=WRITING if alive else INCOMPLETE)
    try:
        manifest = read_base_manifest(store.get_bytes(objs[MANIFEST_NAME].key), keys, folder, backup_id)
    except DbopsError as exc:
        return replace(base, error=exc)
    data = objs.get(DATA_NAME)
    if data is None:
        return replace(base, state=MISSING_DATA, manifest=manifest, error=IntegrityError(
            f"base backup {backup_id}: the manifest authenticates but its data object is missing",
            "something deleted it outside dbops: find out what, and take a new base backup now"))
    if data.size != manifest.stored_bytes:
        return replace(base, manifest=manifest, error=IntegrityError(
            f"base backup {backup_id}: the data object has {data.size} bytes, its manifest says {manifest.stored_bytes}",
            "do not use this base backup; find out what changed it in the store"))
    return replace(base, state=VALID, manifest=manifest, started_at=datetime.fromisoformat(manifest.started_at))


def _group(objects: Iterable[ObjectInfo], folder: str) -> dict[str, dict[str, ObjectInfo]]:
    prefix = f"wal/{folder}/base/"
    groups: dict[str, dict[str, ObjectInfo]] = {}
    for obj in objects:
        parts = obj.key[len(prefix):].split("/") if obj.key.startswith(prefix) else []
        if len(parts) != 2 or parts[1] not in OWN_NAMES:
            continue
        parsed = parse_base_backup_id(parts[0])
        if parsed is None or parsed[0] != folder:
            continue   # not a dbops base backup folder: never listed
        groups.setdefault(parts[0], {})[parts[1]] = obj
    return groups


def list_base_backups(ctx, cluster: str, now: datetime | None = None) -> list[BaseBackupEntry]:
    """Every base backup of ``cluster`` in the store, newest first, each with its state; a
    manifest that does not authenticate is listed as unknown with its problem, never dropped."""
    now = now or datetime.now(timezone.utc)
    folder = cluster_safe(cluster)
    groups = _group(ctx.store.list(base_backup_prefix(cluster)), folder)
    entries = [_read_entry(ctx.store, ctx.read_keys, cluster, folder, bid, parse_base_backup_id(bid)[1], objs, now)
               for bid, objs in groups.items()]
    return sorted(entries, key=lambda e: (e.started_at, e.backup_id), reverse=True)


def find_base_backup(ctx, cluster: str | None, backup_id: str) -> BaseBackupEntry:
    """One valid base backup by id (``cluster`` None: the one its id names); StorageError or
    IntegrityError saying why when it is not there or not valid."""
    parsed = parse_base_backup_id(backup_id)
    if parsed is None:
        raise StorageError(f"{backup_id!r} is not a base backup id (<cluster>-<YYYYMMDDTHHMMSSZ>-<hex>)",
                           "run `dbops basebackup list` to see the base backups in the store")
    folder = parsed[0]
    if cluster is not None and cluster_safe(cluster) != folder:
        raise StorageError(f"base backup {backup_id} is not one of cluster {cluster}",
                           f"run `dbops basebackup list --cluster {cluster}` to see its base backups")
    objs = _group(ctx.store.list(f"wal/{folder}/base/{backup_id}/"), folder).get(backup_id)
    if not objs:
        raise StorageError(f"base backup {backup_id} not found", "run `dbops basebackup list` to see the base backups in the store")
    entry = _read_entry(ctx.store, ctx.read_keys, cluster or folder, folder, backup_id, parsed[1], objs, datetime.now(timezone.utc))
    if entry.state == VALID:
        return entry
    if entry.state in (WRITING, INCOMPLETE):
        raise StorageError(f"base backup {backup_id} is {entry.state} (no manifest)",
                           "it cannot be restored; pick a valid one from `dbops basebackup list`")
    raise entry.error
