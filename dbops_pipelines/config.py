"""Fleet configuration from dbops.yaml plus the environment (docs/configuration.md).

Settings are grouped by feature under each target (`backup`, `verification`, and room for
`stats`, `gdpr`, `wal`, `audit`); what belongs to a PostgreSQL server rather than a database
lives under `clusters`. Files in the flat shape of earlier releases still load
(config_legacy.py). Validation is strict everywhere: unknown keys, duplicate YAML keys,
booleans or strings where numbers belong and meaningless DSNs are errors naming the key path.

Secrets never live in dbops.yaml: the encryption key comes from an environment variable named
in the file, database passwords from the environment (PGPASSWORD) or a PGPASSFILE, S3
credentials from boto3's usual chain, alert sink secrets from variables named by *_env keys.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dbops_pipelines.backup.retention import RetentionPolicy
from dbops_pipelines.config_legacy import DEFAULTS_MOVES, TARGET_MOVES, as_written, migrate, warn_moves
from dbops_pipelines.config_sinks import AlertSettings, SinkSettings  # noqa: F401  (re-exported)
from dbops_pipelines.cron import check_cron, check_timezone, period_minutes
from dbops_pipelines.errors import ConfigError
from dbops_pipelines.pgtools import InvalidDsn, dsn_fields
from dbops_pipelines.redact import redact

DEFAULT_CONFIG_PATH = "dbops.yaml"
BackupKind = Literal["full", "schema", "tables"]
Purpose = Literal["backup", "cleanup", "monitor"]


class _Strict(BaseModel):
    # strict: `keep_daily: true` or `keep_daily: "7"` is an error, not 1 or 7 (an int is still a float)
    model_config = ConfigDict(extra="forbid", strict=True)


def _check_dsn(v: str) -> str:
    """A DSN libpq can parse (pgtools.dsn_fields, the one DSN parser), that names something, and
    holds no password. Messages never echo it, nor any part of it."""
    if not v.strip():
        raise ValueError("the DSN is empty: libpq would connect wherever its defaults point; write "
                         "postgresql://user@host:port/dbname")
    if redact(v) != v:
        raise ValueError("the DSN contains a password; remove it and supply it through PGPASSWORD or a PGPASSFILE")
    scheme = re.match(r"\s*([A-Za-z][A-Za-z0-9+.-]*)://", v)
    if scheme and scheme[1].lower() not in ("postgresql", "postgres"):
        # libpq would read it as a key=value string and quote all of it back
        raise ValueError(f"the DSN scheme is {scheme[1]!r}; use postgresql://user@host:port/dbname")
    try:
        info = dsn_fields(v)
    except InvalidDsn as exc:
        raise ValueError("the DSN's port is not a number from 1 to 65535" if exc.port is not None
                         else f"libpq cannot parse the DSN ({exc.reason.removeprefix('libpq cannot parse it: ')})") from None
    if not any(info.get(k) for k in ("host", "hostaddr", "dbname", "service")):
        raise ValueError("the DSN names no host, database or service; write postgresql://user@host:port/dbname")
    return v


Dsn = Annotated[str, AfterValidator(_check_dsn)]
Cron = Annotated[str, AfterValidator(check_cron)]
Timezone = Annotated[str, AfterValidator(check_timezone)]
RoleName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_$.-]{0,62}$")]


class RetentionSettings(_Strict):
    keep_daily: int = Field(7, ge=0)
    keep_weekly: int = Field(4, ge=0)
    keep_monthly: int = Field(12, ge=0)
    min_age_days: int = Field(30, ge=0)

    def policy(self) -> RetentionPolicy:
        return RetentionPolicy(**self.model_dump())


class WalRetentionSettings(RetentionSettings):
    """targets.<name>.wal.retention: base backups by the same GFS keys, or by count."""

    keep_last: int | None = Field(None, ge=1)   # keep the newest N valid base backups (the GFS keys then do not apply)

    def policy(self) -> RetentionPolicy:
        return RetentionPolicy(**self.model_dump(exclude={"keep_last"}))


class StorageSettings(_Strict):
    url: str = "file://./backups"
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        if not re.match(r"(file|s3)://", v):
            raise ValueError("storage.url must start with file:// or s3://")
        return v


class EncryptionSettings(_Strict):
    key_env: str = "DBOPS_BACKUP_KEY"
    # Keys still needed to read older backups after a rotation; never used to write.
    previous_key_envs: list[str] = []


class SanityCheck(_Strict):
    """An operator's query run against the restored copy. It returns one value, compared with
    ``expect``: a literal (equality) or a string "<op> <number>" with op one of < <= > >= == !=.
    Parameters: %(backup_started_at)s, %(backup_finished_at)s, %(target)s."""

    name: str
    sql: str
    expect: bool | int | float | str = True


class VerificationSettings(_Strict):
    """Every key optional: a target's block overrides `defaults.verification` key by key."""

    server_dsn: Dsn | None = None       # a staging server; default: the target's own server
    # Restoring on the target's own server (no server_dsn) puts a whole restore's load on it; every
    # verification warns about it unless this says it is deliberate. Reports record it either way.
    same_server_on_purpose: bool | None = None              # default false
    schedule: Cron | None = None         # default "0 4 * * 0" (Sunday 04:00)
    timezone: Timezone | None = None
    rto_objective_seconds: int | None = Field(None, ge=1)   # default 4 h
    checksum_max_bytes: int | None = Field(None, ge=0)      # tables up to this size get content checksums
    jobs: int | None = Field(None, ge=1)                    # parallel pg_restore jobs
    sanity_checks: list[SanityCheck] | None = None
    max_age_days: float | None = Field(None, gt=0)          # alert when no passing verification is younger


VERIFICATION_DEFAULTS = VerificationSettings(
    schedule="0 4 * * 0", timezone="UTC", rto_objective_seconds=4 * 3600,
    checksum_max_bytes=16 << 20, jobs=1, sanity_checks=[], max_age_days=8, same_server_on_purpose=False,
)


class TargetBackupSettings(_Strict):
    """targets.<name>.backup: what to dump and when; unset keys come from defaults.backup."""

    kind: BackupKind = "full"
    tables: list[str] = []              # for kind=tables
    exclude_table_data: list[str] = []  # schema kept, rows left out (e.g. huge logs)
    schedule: Cron | None = None
    timezone: Timezone | None = None
    retention: RetentionSettings | None = None   # key by key over defaults.backup.retention
    rpo_hours: float | None = Field(None, gt=0)  # alert when the newest valid backup is older


class BackupDefaults(_Strict):
    """defaults.backup: applies to every target's backup unless the target overrides it."""

    schedule: Cron = "0 2 * * *"
    timezone: Timezone = "UTC"
    retention: RetentionSettings = RetentionSettings()
    rpo_hours: float = Field(24, gt=0)
    compression_level: int = Field(3, ge=1, le=19)   # zstd; see docs/benchmarks.md for the trade-off
    run_retries: int = Field(3, ge=0)                # Dagster retries of a run after a transient failure
    retry_delay_seconds: int = Field(60, ge=0)       # doubled on every retry


def _reads_flat_names(moves: dict[str, str]):
    """Class decorator: every flat name of earlier releases in ``moves`` (config_legacy's list:
    ``kind`` -> ``backup.kind``, ``server`` -> ``cluster``) becomes a read-only property reading
    its new place, so code written against the flat shape keeps working. One list serves both
    the migration of old files and these names."""

    def add(cls: type[BaseModel]) -> type[BaseModel]:
        for old, new in moves.items():
            path = new.split(".")
            setattr(cls, old, property(lambda self, path=path: functools.reduce(getattr, path, self),
                                       doc=f"{new} (its flat name of earlier releases)"))
        return cls

    return add


class FeatureSettings(_Strict):
    """wal, audit: accepted and validated now, read by those features when they land."""

    enabled: bool = True
    schedule: Cron | None = None
    timezone: Timezone | None = None


def _no_nulls(model: BaseModel, nullable: frozenset[str] = frozenset()) -> BaseModel:
    """Every key is optional, but one written as null would lay None over its default."""
    for name in sorted(model.model_fields_set - nullable):
        if getattr(model, name) is None:
            raise ValueError(f"{name} is null; leave the key out to keep its default, or give a value")
    return model


class StatsThresholds(_Strict):
    """When a snapshot's numbers become findings (docs/findings.md). Every key optional: a target's
    keys override defaults.stats.thresholds key by key, which override the built-in defaults."""

    slow_statement_warning_ms: float | None = Field(None, gt=0)      # mean time per call
    slow_statement_critical_ms: float | None = Field(None, gt=0)
    slow_statement_min_calls: int | None = Field(None, ge=1)         # fewer calls: too little evidence
    long_running_query_seconds: float | None = Field(None, gt=0)
    idle_in_transaction_seconds: float | None = Field(None, gt=0)
    lock_wait_seconds: float | None = Field(None, gt=0)
    connections_high_ratio: float | None = Field(None, gt=0, le=1)   # of max_connections
    connections_high_count: int | None = Field(None, ge=1)           # absolute; fires when either is passed
    slow_connect_seconds: float | None = Field(None, gt=0)
    cache_hit_low_ratio: float | None = Field(None, gt=0, le=1)
    cache_hit_min_blocks: int | None = Field(None, ge=0)             # reads+hits in the window to judge at all
    dead_tuples_count: int | None = Field(None, ge=0)
    dead_tuples_ratio: float | None = Field(None, ge=0)              # of live tuples
    seq_scan_heavy_min_scans: int | None = Field(None, ge=1)
    seq_scan_heavy_min_bytes: int | None = Field(None, ge=0)         # tables smaller than this are fine to scan
    seq_scan_heavy_max_index_ratio: float | None = Field(None, ge=0, le=1)  # idx_scan / (seq_scan + idx_scan)
    unused_index_min_bytes: int | None = Field(None, ge=0)
    fk_without_index_min_bytes: int | None = Field(None, ge=0)       # referencing tables smaller than this: info
    wraparound_warning_age: int | None = Field(None, ge=1)
    wraparound_critical_age: int | None = Field(None, ge=1)
    replication_lag_bytes: int | None = Field(None, ge=0)
    replication_lag_seconds: float | None = Field(None, ge=0)
    slot_retained_wal_bytes: int | None = Field(None, ge=0)          # inactive slot holding more WAL than this
    pg_stat_statements_full_ratio: float | None = Field(None, gt=0, le=1)   # entries / pg_stat_statements.max

    @model_validator(mode="after")
    def _nulls(self) -> "StatsThresholds":
        # null on purpose: judge connections by the absolute count alone (or by the ratio alone)
        return _no_nulls(self, frozenset({"connections_high_ratio", "connections_high_count"}))


STATS_THRESHOLD_DEFAULTS = StatsThresholds(
    slow_statement_warning_ms=500, slow_statement_critical_ms=10_000, slow_statement_min_calls=1,
    long_running_query_seconds=60, idle_in_transaction_seconds=60, lock_wait_seconds=10,
    connections_high_ratio=0.8, connections_high_count=None, slow_connect_seconds=5,
    cache_hit_low_ratio=0.98, cache_hit_min_blocks=10_000,
    dead_tuples_count=10_000, dead_tuples_ratio=0.10,
    seq_scan_heavy_min_scans=1_000, seq_scan_heavy_min_bytes=10 << 20, seq_scan_heavy_max_index_ratio=0.01,
    unused_index_min_bytes=1 << 20, fk_without_index_min_bytes=1 << 20,
    wraparound_warning_age=500_000_000, wraparound_critical_age=1_200_000_000,
    replication_lag_bytes=64 << 20, replication_lag_seconds=60, slot_retained_wal_bytes=1 << 30,
    pg_stat_statements_full_ratio=0.9,
)


class StatsSettings(_Strict):
    """targets.<name>.stats and defaults.stats; every key optional, a target's keys win."""

    enabled: bool | None = None                  # default true (the feature needs a `metrics:` section)
    schedule: Cron | None = None                  # default "*/5 * * * *"
    timezone: Timezone | None = None
    top_n: int | None = Field(None, ge=1, le=1000)                # statements per ranking, tables, indexes
    statement_timeout_seconds: float | None = Field(None, ge=0.01)   # each snapshot query
    lock_timeout_seconds: float | None = Field(None, ge=0.01)
    report_schedule: Cron | None = None           # the daily report asset; default "15 6 * * *"
    report_window_hours: float | None = Field(None, gt=0)         # default 24
    max_age_minutes: float | None = Field(None, gt=0)             # alert when no snapshot is younger; default 30
    thresholds: StatsThresholds | None = None

    @model_validator(mode="after")
    def _nulls(self) -> "StatsSettings":
        return _no_nulls(self)


STATS_DEFAULTS = StatsSettings(
    enabled=True, schedule="*/5 * * * *", timezone="UTC", top_n=50, statement_timeout_seconds=5,
    lock_timeout_seconds=1, report_schedule="15 6 * * *", report_window_hours=24, max_age_minutes=30,
    thresholds=STATS_THRESHOLD_DEFAULTS,
)


class MetricsSettings(_Strict):
    """metrics: the PostgreSQL database that keeps stats history (docs/stats.md#history)."""

    dsn: Dsn                                       # no password: PGPASSWORD or a PGPASSFILE
    retention_days: int = Field(30, ge=1)          # whole daily partitions older than this are dropped
    schema_name: str = Field("dbops_metrics", pattern=r"^[a-z_][a-z0-9_]{0,62}$")


ColumnAction = Annotated[str | None, AfterValidator(lambda v: _check_column_action(v))]


def _check_column_action(v: str | None) -> str | None:
    if v is None or v == "hash" or (v.startswith("fixed:")):
        return v
    raise ValueError(f"{v!r} is not a column action; use null, hash or \"fixed:<value>\"")


class GdprTableSettings(_Strict):
    """gdpr.tables.<schema.table>: what cleanup does to the rows of a deleted subject there."""

    action: Literal["delete", "anonymize"] = "delete"
    # anonymize: column -> null (set NULL), "hash" (keyed HMAC-SHA-256 token), "fixed:<value>"
    columns: dict[str, ColumnAction] = {}

    @model_validator(mode="after")
    def _columns_for_anonymize(self) -> "GdprTableSettings":
        if self.action == "anonymize" and not self.columns:
            raise ValueError("action anonymize needs `columns` (column: null | hash | \"fixed:<value>\")")
        if self.action == "delete" and self.columns:
            raise ValueError("`columns` only apply to action anonymize")
        return self


class GdprSettings(_Strict):
    """targets.<name>.gdpr: soft-delete cleanup (docs/gdpr.md). Names are schema.table as in
    backups (case-sensitive; double-quote a part that is not plain lower-case)."""

    enabled: bool = True
    subject_table: str                       # the table whose rows are people, e.g. public.users
    grace_days: int = Field(30, ge=0)
    schedule: Cron = "0 3 * * *"
    timezone: Timezone = "UTC"
    tables: dict[str, GdprTableSettings] = {}   # optional: soft-deletable tables are discovered
    exclude: list[str] = []
    soft_delete_column: str = Field("deleted_at", min_length=1, max_length=63)
    batch_size: int = Field(1000, ge=1, le=100_000)
    lock_timeout_seconds: float = Field(1, ge=0.01)
    statement_timeout_seconds: float = Field(30, ge=0.01)
    # A pause after each batch, leaving the server to live traffic: fewer rows/s, lower latency
    # for the application (docs/gdpr.md#benchmark).
    pause_between_batches_seconds: float = Field(0, ge=0, le=60)
    hash_key_env: str = "DBOPS_GDPR_HASH_KEY"   # the HMAC secret's variable; never the secret itself
    # The ops schema in the target database where every run is recorded (gdpr/audit.py).
    audit_schema: str = Field("dbops_audit", min_length=1, max_length=63)
    # restore --anonymize (gdpr/mask.py): table -> {column: null | hash | "fixed:<value>"}, applied to every
    # row of a masked copy, over the columns of the tables listed with action anonymize above
    mask: dict[str, dict[str, ColumnAction]] = {}

    @field_validator("mask")
    @classmethod
    def _mask_columns(cls, v: dict[str, dict[str, str | None]]) -> dict[str, dict[str, str | None]]:
        for table, columns in v.items():
            if not table.strip():
                raise ValueError("a table name under mask is empty; name tables as schema.table")
            if not columns:
                raise ValueError(f"{table!r} lists no columns; give the personal columns to mask "
                                 "(column: null | hash | \"fixed:<value>\")")
            if any(not c for c in columns):
                raise ValueError(f"{table!r} has an empty column name")
        return v


class WalSettings(_Strict):
    """targets.<name>.wal: continuous WAL archiving and base backups of the target's *cluster*
    (docs/pitr.md). Targets on one cluster share its archive, under wal/<cluster>/."""

    enabled: bool = True
    schedule: Cron = "0 1 * * 0"                  # base backups: weekly by default
    timezone: Timezone = "UTC"
    push_parallel: int = Field(4, ge=1, le=32)    # .ready segments one wal-push stores at once
    prefetch: int = Field(8, ge=0, le=64)         # segments wal-fetch fetches ahead during recovery
    # Where wal-push and wal-fetch keep their bookkeeping on the database host (segments already
    # stored, segments fetched ahead). Losing it loses nothing: it is a cache of what the store
    # holds. Never inside the data directory (base backups would copy it).
    # Default: $TMPDIR/dbops-wal-<cluster>-<uid>/ (one folder per store location inside).
    spool_dir: str | None = None
    compression_level: int = Field(1, ge=1, le=19)    # zstd; WAL compresses well already at 1
    retention: WalRetentionSettings | None = None    # base backups, key by key over defaults.backup.retention
    # Archive health (findings and alerts): the newest archived segment older than this while WAL
    # is being written, or more .ready files than this, or pg_wal larger than this.
    max_archive_age_minutes: float = Field(15, gt=0)
    max_ready_files: int = Field(32, ge=1)
    max_pg_wal_bytes: int = Field(8 << 30, ge=1)


class RoleSettings(_Strict):
    """PostgreSQL role per purpose, swapped into the target's DSN; the backup role is the DSN's own."""

    cleanup: RoleName | None = None   # writes (GDPR cleanup): no default, the backup role must stay read-only
    monitor: RoleName | None = None   # reads statistics; default: the backup role


class ClusterSettings(_Strict):
    """clusters.<name>: one PostgreSQL server: what belongs to it rather than to one database."""

    dsn: Dsn | None = None          # the server itself (maintenance database), for server-level features
    # Runs at once against this server: the limit of Dagster pool pg_server_<name>, written into the
    # instance by the dbops_pool_limits sensor (defs/pools.py).
    pool_limit: int | None = Field(None, ge=1)
    roles: RoleSettings = RoleSettings()         # defaults for every target on this cluster


@_reads_flat_names(TARGET_MOVES)
class TargetSettings(_Strict):
    dsn: Dsn                            # the backup reader; no password
    cluster: str | None = None          # a key of `clusters`; default: host:port of the DSN
    roles: RoleSettings = RoleSettings()
    backup: TargetBackupSettings = TargetBackupSettings()
    verification: VerificationSettings | None = None
    stats: StatsSettings | None = None
    gdpr: GdprSettings | None = None
    wal: WalSettings | None = None
    audit: FeatureSettings | None = None


@_reads_flat_names(DEFAULTS_MOVES)
class Defaults(_Strict):
    connect_retries: int = Field(3, ge=0)     # quick reconnects inside one attempt
    owners: list[str] = ["team:dbops"]
    pg_bin_dir: str | None = None
    backup: BackupDefaults = BackupDefaults()
    verification: VerificationSettings = VerificationSettings()
    stats: StatsSettings = StatsSettings()


def _layered(base: BaseModel, *overrides: BaseModel | None) -> BaseModel:
    """``base`` with the keys each override sets explicitly laid over it, in order."""
    merged = base.model_dump()
    for layer in overrides:
        if layer is not None:
            merged.update({k: getattr(layer, k) for k in layer.model_fields_set})
    return type(base).model_validate(merged)


class FleetConfig(_Strict):
    storage: StorageSettings = StorageSettings()
    encryption: EncryptionSettings = EncryptionSettings()
    defaults: Defaults = Defaults()
    clusters: dict[str, ClusterSettings] = {}
    alerts: AlertSettings = AlertSettings()
    metrics: MetricsSettings | None = None
    targets: dict[str, TargetSettings] = {}

    @field_validator("targets")
    @classmethod
    def _target_names(cls, v: dict[str, TargetSettings]) -> dict[str, TargetSettings]:
        for name in v:
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", name):
                raise ValueError(
                    f"target name {name!r} must be lower-case letters, digits and _ (it names assets, jobs and storage paths)"
                )
        return v

    @field_validator("clusters")
    @classmethod
    def _cluster_names(cls, v: dict[str, ClusterSettings]) -> dict[str, ClusterSettings]:
        for name in v:
            if not re.fullmatch(r"[A-Za-z0-9_.:\[\]-]{1,128}", name):
                raise ValueError(f"cluster name {name!r} may hold letters, digits and _ . : - [ ] only "
                                 "(it names a Dagster pool and, later, a storage path)")
        return v

    @model_validator(mode="after")
    def _stats_thresholds_in_order(self) -> "FleetConfig":
        for name in self.targets:
            th = self.stats_for(name).thresholds
            for what, warning, critical in (("slow_statement", th.slow_statement_warning_ms, th.slow_statement_critical_ms),
                                            ("wraparound", th.wraparound_warning_age, th.wraparound_critical_age)):
                if warning > critical:
                    raise ValueError(f"targets.{name}.stats.thresholds: {what} warning ({warning:g}) is above its "
                                     f"critical threshold ({critical:g}); the warning must come first")
        return self

    @model_validator(mode="after")
    def _clusters_declared(self) -> "FleetConfig":
        for name, t in self.targets.items():
            if t.cluster is not None and t.cluster not in self.clusters:
                known = ", ".join(sorted(self.clusters)) or "none"
                raise ValueError(f"targets.{name}.cluster: {t.cluster!r} is not declared under clusters "
                                 f"(declared: {known})")
        return self

    def target(self, name: str) -> TargetSettings:
        try:
            return self.targets[name]
        except KeyError:
            known = ", ".join(sorted(self.targets)) or "none"
            raise ConfigError(f"unknown target {name!r}", f"targets in the config: {known}") from None

    def schedule_for(self, name: str) -> tuple[str, str]:
        t = self.target(name)
        return t.schedule or self.defaults.schedule, t.timezone or self.defaults.timezone

    def retention_for(self, name: str) -> RetentionPolicy:
        """Target keys over defaults.backup.retention keys."""
        return _layered(self.defaults.retention, self.target(name).retention).policy()

    def verification_for(self, name: str) -> VerificationSettings:
        """Target keys over defaults.verification keys over the built-in defaults."""
        return _layered(VERIFICATION_DEFAULTS, self.defaults.verification, self.target(name).verification)

    def stats_for(self, name: str) -> StatsSettings:
        """Target keys over defaults.stats keys over the built-in defaults; thresholds likewise,
        key by key (a target that sets one threshold keeps the others). Unless set, the stale
        limit follows the schedule: three periods, at least 30 minutes (an hourly schedule must
        not read as "stale" half of every hour)."""
        target = self.target(name).stats
        merged = _layered(STATS_DEFAULTS, self.defaults.stats, target)
        merged.thresholds = _layered(STATS_THRESHOLD_DEFAULTS, self.defaults.stats.thresholds,
                                     target.thresholds if target else None)
        if not any("max_age_minutes" in (layer.model_fields_set if layer else ()) for layer in (self.defaults.stats, target)):
            period = period_minutes(merged.schedule)
            merged.max_age_minutes = max(STATS_DEFAULTS.max_age_minutes, 3 * period) if period else STATS_DEFAULTS.max_age_minutes
        return merged

    def rpo_hours_for(self, name: str) -> float:
        return self.target(name).rpo_hours or self.defaults.rpo_hours

    def server_of(self, name: str) -> str:
        """The target's cluster name: `cluster:`, else host:port of its DSN (which may itself be a
        key of `clusters`). It names the concurrency pool."""
        t = self.target(name)
        if t.cluster:
            return t.cluster
        return host_port(t.dsn)

    def cluster_of(self, name: str) -> ClusterSettings:
        """The settings of the target's cluster; defaults when it is not declared."""
        return self.clusters.get(self.server_of(name), ClusterSettings())

    def dsn_for(self, name: str, purpose: Purpose) -> str:
        """The DSN to use for one purpose: the target's `dsn` with the purpose's role from
        targets.<name>.roles, else clusters.<cluster>.roles. `backup` is always `dsn` itself."""
        t = self.target(name)
        if purpose == "backup":
            return t.dsn
        if purpose not in ("cleanup", "monitor"):
            raise ConfigError(f"unknown connection purpose {purpose!r}", "use backup, cleanup or monitor")
        role = getattr(t.roles, purpose) or getattr(self.cluster_of(name).roles, purpose)
        if role:
            return make_conninfo(t.dsn, user=role)
        if purpose == "monitor":
            return t.dsn
        raise ConfigError(
            f"target {name!r} has no role for {purpose}",
            f"set targets.{name}.roles.{purpose} (or clusters.{self.server_of(name)}.roles.{purpose}) to a role "
            "that may change rows; the backup role in `dsn` should stay read-only",
        )


def host_port(dsn: str) -> str:
    """The server a DSN (URL or key=value form) points at, as host:port."""
    info = conninfo_to_dict(dsn)
    return f"{info.get('host') or 'localhost'}:{info.get('port') or 5432}"


# --- reading the file ------------------------------------------------------------------------

class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys without a word; a config must not."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":   # `<<: *anchor` overrides are YAML's own rule
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise ConfigError(f"line {line}: key {redact(str(key))!r} appears twice in one mapping "
                                  f"(first on line {seen[key]})", "keep one of them: YAML would silently use the last")
            seen.setdefault(key, line)
        return super().construct_mapping(node, deep=deep)


def config_path() -> Path:
    return Path(os.environ.get("DBOPS_CONFIG", DEFAULT_CONFIG_PATH))


def load_config(path: str | Path | None = None) -> FleetConfig:
    return load_config_snapshot(path)[0]


def load_config_snapshot(path: str | Path | None = None) -> tuple[FleetConfig, str]:
    """The config and the sha256 of the exact bytes it was parsed from (read once)."""
    path = Path(path) if path else config_path()
    if not path.exists():
        raise ConfigError(
            f"config file {path} not found",
            "create it (see docs/configuration.md) or point DBOPS_CONFIG at it",
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror or exc}",
                          "the OS user running dbops (for wal-push and wal-fetch: the server's OS user, e.g. postgres) "
                          "must be able to read it: check its owner and mode and those of its directories") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not valid UTF-8 (byte {exc.start} cannot be decoded)",
                          "save the file as UTF-8") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.message}", exc.hint) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {redact(str(exc))}", "fix the syntax error") from None
    return parse_config(raw, source=str(path)), hashlib.sha256(data).hexdigest()


def _problem(e: dict, moves: list[tuple[str, str]]) -> str:
    where = as_written(".".join(str(p) for p in e["loc"]), moves)
    msg = redact(e["msg"]).removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


def parse_config(raw: dict, source: str = "config") -> FleetConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} is invalid: the top level must be a mapping of sections",
                          "start from the example in docs/configuration.md")
    try:
        raw, moves = migrate(raw)
    except ConfigError as exc:
        raise ConfigError(f"{source} is invalid: {redact(exc.message)}", exc.hint) from None
    try:
        cfg = FleetConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_problem(e, moves) for e in exc.errors())
        raise ConfigError(f"{source} is invalid: {problems}", "fix the listed keys (docs/configuration.md)") from None
    warn_moves(moves, source)
    # Relative file:// paths are relative to the config file, so the demo and tests are portable.
    if cfg.storage.url.startswith("file://") and source != "config":
        loc = cfg.storage.url[len("file://"):]
        if not loc.startswith("/"):
            base = Path(source).resolve().parent
            cfg.storage.url = "file://" + str((base / loc).resolve())
    if source != "config":
        cfg.alerts.resolve_paths(Path(source).resolve().parent)   # file sinks' relative paths, likewise
    return cfg
