"""Operations on a configured fleet, shared by the `dbops` CLI and the Dagster layer: resolve a
target's settings, keys and store from dbops.yaml, then call the core."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from dbops_pipelines.backup.catalog import BackupEntry, delete_backup, list_backups
from dbops_pipelines.backup.crypto import BackupKey, key_from_env
from dbops_pipelines.backup.engine import BackupOptions, run_backup
from dbops_pipelines.progress import Progress
from dbops_pipelines.backup.manifest import BackupManifest
from dbops_pipelines.backup.retention import RetentionPlan, plan_retention
from dbops_pipelines.config import FleetConfig
from dbops_pipelines.errors import EncryptionKeyError
from dbops_pipelines.storage import BackupStore, open_store


def fleet_store(cfg: FleetConfig) -> BackupStore:
    return open_store(cfg.storage.url, cfg.storage.s3_endpoint_url, cfg.storage.s3_region)


def write_key(cfg: FleetConfig) -> BackupKey:
    """The key new backups are encrypted with; raises before anything is dumped if missing."""
    return key_from_env(cfg.encryption.key_env)


def read_keys(cfg: FleetConfig) -> list[BackupKey]:
    """Every configured key that is set: the current one and those kept after rotations."""
    keys, problems = [], []
    for var in [cfg.encryption.key_env, *cfg.encryption.previous_key_envs]:
        try:
            keys.append(key_from_env(var))
        except EncryptionKeyError as exc:
            problems.append(exc.message)
    if not keys:
        raise EncryptionKeyError("; ".join(problems), "export the key the backups were written with (see `dbops keygen`)")
    return keys


def backup_options(cfg: FleetConfig, target: str, kind: str | None = None, tables: tuple[str, ...] = ()) -> BackupOptions:
    t = cfg.target(target)
    kind = kind or ("tables" if tables else t.kind)
    return BackupOptions(
        kind=kind,
        tables=(tuple(tables) or tuple(t.tables)) if kind == "tables" else (),
        exclude_table_data=tuple(t.exclude_table_data),
        connect_retries=cfg.defaults.connect_retries,
        pg_bin_dir=cfg.defaults.pg_bin_dir,
        zstd_level=cfg.defaults.compression_level,
        checksum_max_bytes=cfg.verification_for(target).checksum_max_bytes,
    )


def backup_target(
    cfg: FleetConfig,
    target: str,
    kind: str | None = None,
    tables: tuple[str, ...] = (),
    progress: Callable[[Progress], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
    store: BackupStore | None = None,
    progress_interval: float = 5.0,
) -> BackupManifest:
    settings = cfg.target(target)
    key = write_key(cfg)
    return run_backup(target, settings.dsn, store or fleet_store(cfg), key,
                      backup_options(cfg, target, kind, tables), progress=progress, on_warning=on_warning,
                      progress_interval=progress_interval)


LEFTOVER_AGE = timedelta(days=1)  # older than any backup still being written


@dataclass
class RetentionOutcome:
    plan: RetentionPlan
    deleted: list[str] = field(default_factory=list)
    swept: list[str] = field(default_factory=list)   # leftovers of killed writers


def apply_retention(cfg: FleetConfig, target: str | None = None, dry_run: bool = False,
                    now: datetime | None = None, store: BackupStore | None = None) -> RetentionOutcome:
    store = store or fleet_store(cfg)
    now = now or datetime.now(timezone.utc)
    entries: list[BackupEntry] = list_backups(store, target)
    targets = {e.target for e in entries}
    overrides = {t: cfg.retention_for(t) for t in targets if t in cfg.targets}
    plan = plan_retention([e.to_record() for e in entries], cfg.defaults.retention.policy(), now, overrides)
    outcome = RetentionOutcome(plan)
    if dry_run:
        return outcome
    by_id = {(e.target, e.backup_id): e for e in entries}
    for decision in plan.to_delete:
        delete_backup(store, by_id[(decision.target, decision.backup_id)])
        outcome.deleted.append(decision.backup_id)
    outcome.swept = store.sweep_leftovers(LEFTOVER_AGE)
    return outcome
