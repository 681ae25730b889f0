"""Retention of one cluster's base backups and WAL archive (docs/pitr.md#retention). No Dagster.

``plan_wal_retention`` is pure (no I/O): given the base backups as ``list_base_backups`` lists
them, the archive's objects as the store lists them, a policy and ``now``, it decides what goes.
``apply_wal_retention`` lists, plans and (unless ``dry_run``) deletes.

Base backups
    Kept by the logical backups' grandfather-father-son policy (backup.retention.plan_retention,
    the same rules: the newest valid backup of each of the N most recent days/weeks/months that
    have one, nothing younger than ``min_age_days``, the newest valid one always, backups being
    written or dated in the future kept), by their start time; or by count (``keep_last``: the
    newest N valid base backups, ``min_age_days`` still a floor). Incomplete leftovers of dead
    writers go once older than ``min_age_days``.

WAL
    Kept from the segment holding the start LSN of the oldest kept base backup onward, on every
    timeline; everything at an earlier position goes. "Oldest" means the smallest start position
    among the kept valid base backups (the oldest by time, except after a point-in-time restore
    rewound the cluster onto a new timeline at an earlier position, when position is what
    counts). Recovery from a base backup never reads WAL before its start position, on its own
    timeline or on any other, so a segment of an older timeline that precedes that position is
    not needed either. Timeline history files (``*.history``) are always kept: they are tiny
    and recovery needs them to follow timelines. Backup-history (``.backup``) and ``.partial``
    files go with the segment they belong to. The cut-off segment itself is kept.

Data safety first
    * Any base backup whose state is unknown (a manifest that does not authenticate, a missing
      or resized data object), a valid one whose start segment cannot be established, one that
      belongs to another cluster than the archive (system identifier), or an ``archive.info``
      that cannot be trusted stops retention for the cluster: nothing at all is deleted
      (``plan.blocked`` says why). Someone has to look.
    * With no valid base backup, no WAL is deleted: it may be all that is left.
    * The newest valid base backup is always kept, hence its WAL too (the cut-off is at or
      before its start).
    * Objects of the archive that are not WAL files dbops wrote are never deleted.

Applying
    Base backups first, each manifest first, then its data object, then its lease (what
    ``backup.catalog.delete_backup`` does for logical backups): an interrupted delete leaves an
    incomplete backup, never one listed as valid with its data gone. Then the WAL, oldest first,
    so an interrupted run leaves the archive a contiguous range with no hole in the middle. The
    WAL is deleted only when every planned base backup deletion succeeded: a base backup kept by
    accident must not lose its WAL. The first failure stops the run; the outcome says what was
    done and what failed.
"""

from __future__ import annotations

from dbops_pipelines.wal.retention.apply import WalRetentionOutcome, apply_wal_retention
from dbops_pipelines.wal.retention.plan import (
    WalObject,
    WalRetentionPlan,
    WalRetentionPolicy,
    classify,
    plan_wal_retention,
    start_segment,
    wal_retention_policy,
)

__all__ = [
    "WalObject", "WalRetentionOutcome", "WalRetentionPlan", "WalRetentionPolicy", "apply_wal_retention", "classify",
    "plan_wal_retention", "start_segment", "wal_retention_policy",
]
