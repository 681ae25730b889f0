"""Moving a store from the layout of dbops before 0.2 (``<target>/<backup_id>/``, manifest
format 1) into the backup namespace (``backups/<target>/<backup_id>/``, manifest format 2).

Nothing is guessed: a legacy backup is moved only if its manifest authenticates; its data is
copied create-only and checked against the manifest's size and sha256, the new manifest is
written and confirmed, and only then is the old copy deleted (manifest first). A legacy folder
without a trusted manifest is left where it is and reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from dbops_pipelines.backup.crypto import BackupKey
from dbops_pipelines.backup.engine import confirm_stored
from dbops_pipelines.backup.manifest import (DATA_NAME, FORMAT_VERSION, MANIFEST_NAME, data_key, manifest_key,
                                             parse_backup_id, read_manifest, seal_manifest)
from dbops_pipelines.errors import DbopsError
from dbops_pipelines.storage.base import BackupStore


def _legacy(target: str, backup_id: str, name: str) -> str:
    return f"{target}/{backup_id}/{name}"


def legacy_backups(store: BackupStore, target: str) -> dict[str, set[str]]:
    """Backup id -> file names of this target's backups in the old layout."""
    found: dict[str, set[str]] = {}
    for obj in store.list(f"{target}/{target}-"):
        parts = obj.key.split("/")
        if len(parts) == 3 and parts[2] in (DATA_NAME, MANIFEST_NAME) and (parse_backup_id(parts[1]) or ("",))[0] == target:
            found.setdefault(parts[1], set()).add(parts[2])
    return found


@dataclass
class MigrationResult:
    moved: list[str] = field(default_factory=list)
    left: dict[str, str] = field(default_factory=dict)   # backup id -> why it was not moved


def migrate_target(store: BackupStore, keys: list[BackupKey], target: str,
                   log: Callable[[str], None] = lambda _m: None) -> MigrationResult:
    result = MigrationResult()
    for backup_id, names in sorted(legacy_backups(store, target).items()):
        if names != {DATA_NAME, MANIFEST_NAME}:
            result.left[backup_id] = "incomplete in the old layout (no manifest or no data); left in place"
            continue
        try:
            old = read_manifest(store.get_bytes(_legacy(target, backup_id, MANIFEST_NAME)), keys, target, backup_id,
                                expected_object_key=_legacy(target, backup_id, DATA_NAME))
        except DbopsError as exc:
            result.left[backup_id] = f"{exc.message}; left in place"
            continue
        new_key = data_key(target, backup_id)
        if store.stat(manifest_key(target, backup_id)) is None:
            if store.stat(new_key) is not None:
                store.delete(new_key)  # our own copy from an interrupted migration, never committed
            copied = store.put(new_key, store.get(old.object_key), size_hint=old.stored_bytes)
            if (copied.size, copied.sha256) != (old.stored_bytes, old.sha256):
                store.delete(new_key)
                result.left[backup_id] = "its data does not match its manifest's size and sha256; left in place"
                continue
            new = replace(old, object_key=new_key, location=copied.location, format_version=FORMAT_VERSION)
            # Signed with the key that wrote the data (its key id is the manifest's): version 2
            # binds the manifest to its new place.
            store.put_bytes(manifest_key(target, backup_id), seal_manifest(new, next(k for k in keys if k.key_id == old.key_id)))
            confirm_stored(store, new)
        else:
            try:  # moved by an interrupted earlier run: delete the old copy only if the new one is the same backup
                new = read_manifest(store.get_bytes(manifest_key(target, backup_id)), keys, target, backup_id)
                confirm_stored(store, new)
            except DbopsError as exc:
                result.left[backup_id] = f"a copy under backups/ exists but cannot be trusted ({exc.message}); both left in place"
                continue
            if new.sha256 != old.sha256:
                result.left[backup_id] = "a different backup with this id exists under backups/; both left in place"
                continue
        store.delete(_legacy(target, backup_id, MANIFEST_NAME))
        store.delete(_legacy(target, backup_id, DATA_NAME))
        result.moved.append(backup_id)
        log(f"moved {backup_id} to backups/{target}/")
    return result
