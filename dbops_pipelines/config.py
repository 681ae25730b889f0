"""Fleet configuration from dbops.yaml plus the environment, and the one DSN redaction helper.

Secrets never live in dbops.yaml: the encryption key comes from an environment variable named
in the file, database passwords from the environment (PGPASSWORD) or a PGPASSFILE, and S3
credentials from boto3's usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile...).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import yaml
from psycopg.conninfo import conninfo_to_dict
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dbops_pipelines.backup.retention import RetentionPolicy
from dbops_pipelines.errors import ConfigError
from dbops_pipelines.redact import redact

DEFAULT_CONFIG_PATH = "dbops.yaml"
BackupKind = Literal["full", "schema", "tables"]

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RetentionSettings(_Strict):
    keep_daily: int = Field(7, ge=0)
    keep_weekly: int = Field(4, ge=0)
    keep_monthly: int = Field(12, ge=0)
    min_age_days: int = Field(30, ge=0)

    def policy(self) -> RetentionPolicy:
        return RetentionPolicy(**self.model_dump())


class StorageSettings(_Strict):
    url: str = "file://./backups"
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        scheme = urlsplit(v).scheme
        if scheme not in ("file", "s3"):
            raise ValueError(f"storage.url must start with file:// or s3://, got {v!r}")
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

    server_dsn: str | None = None       # a staging server; default: the target's own server
    schedule: str | None = None         # default "0 4 * * 0" (Sunday 04:00)
    timezone: str | None = None
    rto_objective_seconds: int | None = Field(None, ge=1)   # default 4 h
    checksum_max_bytes: int | None = Field(None, ge=0)      # tables up to this size get content checksums
    jobs: int | None = Field(None, ge=1)                    # parallel pg_restore jobs
    sanity_checks: list[SanityCheck] | None = None
    max_age_days: float | None = Field(None, gt=0)          # alert when no passing verification is younger

    @field_validator("server_dsn")
    @classmethod
    def _no_password(cls, v: str | None) -> str | None:
        if v and redact(v) != v:
            raise ValueError("the DSN contains a password; supply it through PGPASSWORD or a PGPASSFILE")
        return v


VERIFICATION_DEFAULTS = VerificationSettings(
    schedule="0 4 * * 0", timezone="UTC", rto_objective_seconds=4 * 3600,
    checksum_max_bytes=16 << 20, jobs=1, sanity_checks=[], max_age_days=8,
)


class SinkSettings(BaseModel):
    """One alert destination; the keys beyond these depend on ``kind`` (docs/alerts.md).
    Secrets are named by *_env keys and read from the environment when alerts are sent."""

    model_config = ConfigDict(extra="allow")
    kind: Literal["slack", "webhook", "email", "pagerduty"]
    min_severity: Literal["info", "warning", "critical"] = "warning"


class AlertSettings(_Strict):
    ui_base_url: str = "http://127.0.0.1:3000"   # links in messages point at runs in this UI
    reminder_minutes: int = Field(240, ge=1)      # an open alert is repeated this often, not every tick
    sensor_interval_seconds: int = Field(30, ge=5)
    sinks: list[SinkSettings] = []


class TargetSettings(_Strict):
    dsn: str
    kind: BackupKind = "full"
    tables: list[str] = []            # for kind=tables
    exclude_table_data: list[str] = []  # schema kept, rows left out (e.g. huge logs)
    schedule: str | None = None
    timezone: str | None = None
    retention: RetentionSettings | None = None
    server: str | None = None         # concurrency group; defaults to host:port of the DSN
    verification: VerificationSettings | None = None
    rpo_hours: float | None = Field(None, gt=0)   # alert when the newest valid backup is older

    @field_validator("dsn")
    @classmethod
    def _no_password(cls, v: str) -> str:
        if redact(v) != v:
            raise ValueError(
                "the DSN contains a password; remove it and supply it through PGPASSWORD or a PGPASSFILE"
            )
        return v


class Defaults(_Strict):
    schedule: str = "0 2 * * *"
    timezone: str = "UTC"
    retention: RetentionSettings = RetentionSettings()
    connect_retries: int = Field(3, ge=0)     # quick reconnects inside one attempt
    run_retries: int = Field(3, ge=0)         # Dagster retries of a run after a transient failure
    retry_delay_seconds: int = Field(60, ge=0)  # doubled on every retry
    owners: list[str] = ["team:dbops"]
    pg_bin_dir: str | None = None
    compression_level: int = Field(3, ge=1, le=19)   # zstd; see docs/benchmarks.md for the trade-off
    verification: VerificationSettings = VerificationSettings()
    rpo_hours: float = Field(24, gt=0)


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
    alerts: AlertSettings = AlertSettings()
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
        """Target keys over defaults.retention keys."""
        return _layered(self.defaults.retention, self.target(name).retention).policy()

    def verification_for(self, name: str) -> VerificationSettings:
        """Target keys over defaults.verification keys over the built-in defaults."""
        return _layered(VERIFICATION_DEFAULTS, self.defaults.verification, self.target(name).verification)

    def rpo_hours_for(self, name: str) -> float:
        return self.target(name).rpo_hours or self.defaults.rpo_hours

    def server_of(self, name: str) -> str:
        t = self.target(name)
        if t.server:
            return t.server
        info = conninfo_to_dict(t.dsn)  # URL or key=value form
        return f"{info.get('host') or 'localhost'}:{info.get('port') or 5432}"


def config_path() -> Path:
    return Path(os.environ.get("DBOPS_CONFIG", DEFAULT_CONFIG_PATH))


def load_config(path: str | Path | None = None) -> FleetConfig:
    path = Path(path) if path else config_path()
    if not path.exists():
        raise ConfigError(
            f"config file {path} not found",
            "create it (see docs/configuration.md) or point DBOPS_CONFIG at it",
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}", "fix the syntax error") from None
    return parse_config(raw, source=str(path))


def parse_config(raw: dict, source: str = "config") -> FleetConfig:
    try:
        cfg = FleetConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {redact(e['msg'])}" for e in exc.errors()
        )
        raise ConfigError(f"{source} is invalid: {problems}", "fix the listed keys (docs/configuration.md)") from None
    # Relative file:// paths are relative to the config file, so the demo and tests are portable.
    if cfg.storage.url.startswith("file://") and source != "config":
        loc = cfg.storage.url[len("file://"):]
        if not loc.startswith("/"):
            base = Path(source).resolve().parent
            cfg.storage.url = "file://" + str((base / loc).resolve())
    return cfg
