"""Every name the Dagster layer gives things, in one place: asset keys, job, schedule, sensor and
pool names, and the tags that let the alert sensor find a run's or a check's target.

An asset key is ``[<target>, <asset>]`` and each target is its own asset group, so the lineage
graph shows one group per database whose nodes say what they are ("backup", "backup_retention",
"restore_verification") instead of a row of nodes all called "app".
"""

from __future__ import annotations

import re

import dagster as dg

from dbops_pipelines.config import FleetConfig, host_port

# Tags on jobs, assets and runs. The alert sensor reads TARGET/FEATURE; CONFIG_SHA256 records
# which dbops.yaml a job was defined from.
TARGET_TAG = "dbops/target"
FEATURE_TAG = "dbops/feature"
SERVER_TAG = "dbops/server"
CONFIG_TAG = "dbops/config_sha256"
# On a check's metadata: its feature alerts finding by finding (through its conditions), so a
# failed evaluation of this check is not an alert of its own.
ALERTS_PER_FINDING = "dbops/alerts_per_finding"
# On a materialization that records what was done but not all of it (a stats snapshot taken but not
# kept): the alert sensor does not count it as its feature's success.
INCOMPLETE_TAG = "dbops/incomplete"

# Asset names (the last part of each key); a feature's name is its main asset's name.
BACKUP = "backup"
BACKUP_RETENTION = "backup_retention"
RESTORE_VERIFICATION = "restore_verification"
STATS = "stats"
GDPR_CLEANUP = "gdpr_cleanup"
STATS_REPORT = "stats_report"
BASE_BACKUP = "base_backup"

# Check names.
STORED_BACKUP_INTEGRITY = "stored_backup_integrity"
RESTORED_COPY_MATCHES = "restored_copy_matches"
NO_OVERDUE_ROWS = "no_overdue_soft_deleted_rows"
ARCHIVE_HEALTH = "archive_health"

ALERT_SENSOR = "dbops_alerts"
POOL_SENSOR = "dbops_pool_limits"


def asset_key(target: str, asset: str) -> dg.AssetKey:
    return dg.AssetKey([target, asset])


def check_key(target: str, asset: str, check: str) -> dg.AssetCheckKey:
    return dg.AssetCheckKey(asset_key(target, asset), check)


def job_name(verb: str, target: str) -> str:
    """``backup_app``, ``verify_app``: what an operator launches, named by what it does."""
    return f"{verb}_{target}"


def schedule_name(verb: str, target: str) -> str:
    return f"{job_name(verb, target)}_schedule"


def pool_name(cluster: str) -> str:
    """The Dagster concurrency pool of one PostgreSQL server (a cluster name or host:port)."""
    return "pg_server_" + re.sub(r"[^A-Za-z0-9_]", "_", cluster)


def server_pool(cfg: FleetConfig, target: str) -> str:
    return pool_name(cfg.server_of(target))


def verification_pool(cfg: FleetConfig, target: str) -> str:
    """Where a verification's load lands: the staging server's pool when one is configured (a long
    restore there must not hold back the production server's backups), else the target's own."""
    staging = cfg.verification_for(target).server_dsn
    if not staging:
        return server_pool(cfg, target)
    return pool_name(host_port(staging))


def target_tags(cfg: FleetConfig, target: str, feature: str, config_sha256: str | None = None) -> dict[str, str]:
    """Tags of a feature's job: the alert sensor finds runs by these, never by job name."""
    tags = {TARGET_TAG: target, FEATURE_TAG: feature, SERVER_TAG: cfg.server_of(target)}
    if config_sha256:
        tags[CONFIG_TAG] = config_sha256
    return tags


def subject_of(key: dg.AssetKey, targets) -> tuple[str, str] | None:
    """``(target, asset)`` of one of our asset keys; None for anything else in the instance."""
    path = key.path
    if len(path) == 2 and path[0] in targets:
        return path[0], path[1]
    return None


def storage_kind(cfg: FleetConfig) -> str:
    """The kind badge of assets that live in the store: what it really is."""
    return "s3" if cfg.storage.url.startswith("s3://") else "file"
