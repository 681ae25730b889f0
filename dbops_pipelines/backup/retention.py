"""Grandfather-father-son (GFS) retention planning for database backups.

Pure logic: no I/O. The caller lists backups, asks for a plan, prints
``plan.summary()`` on dry runs and deletes ``plan.to_delete`` otherwise.

Rules, applied per target:

* Buckets are UTC calendar days, ISO weeks and calendar months. For each
  granularity the newest *valid* backup of each of the N most recent buckets
  *that contain a valid backup* is kept. Empty buckets do not use up a slot, so
  a target that was not backed up for a while still keeps N dailies/weeklies/
  monthlies instead of silently keeping fewer (pgBackRest/Barman behave like
  "keep the last N", not "keep what falls in the last N calendar days").
* Nothing younger than ``min_age_days`` is deleted, valid or not.
* The newest valid backup and the newest verified backup are always kept,
  whatever their age: retention must never leave a target without a restore.
* Slots are kept per kind: full backups always, and the target's configured kind
  when that is partial (a ``kind: tables`` target keeps its own backups by the
  same policy). Other partial backups (a one-off schema-only dump) never fill
  slots nor count as "newest", and are deleted once older than ``min_age_days``;
  partial backups never crowd out full ones, whose slots are their own.
* Backups being written are kept and never judged.
* Incomplete backups (no manifest, no live writer) never fill GFS slots; they
  are deleted once older than ``min_age_days``.
* When the state of any backup of a target is unknown (a manifest that cannot
  be read or trusted, a data object missing or of the wrong size), nothing of
  that target is deleted and the plan says why (``plan.blocked``).
* Backups dated after ``now`` (clock skew) are kept and otherwise ignored: they
  fill no GFS slot and do not count as "newest", so the newest trustworthy
  backup stays protected.
* "Newer" means a larger ``(started_at, backup_id)``, which makes ties
  deterministic whatever the input order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta, timezone
from typing import Any

DELETE_NOT_NEEDED = "not needed by daily/weekly/monthly policy"
KEEP_FUTURE = "in the future (clock skew?)"
KEEP_NEWEST_VALID = "newest valid backup"
KEEP_NEWEST_VERIFIED = "newest verified backup"
KEEP_WRITING = "being written"
KEEP_BLOCKED = "retention stopped for this target"


@dataclass(frozen=True)
class RetentionPolicy:
    keep_daily: int = 7
    keep_weekly: int = 4
    keep_monthly: int = 12
    min_age_days: int = 30  # nothing younger than this is ever deleted

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            # bool is an int subclass; keep_daily=True is certainly a mistake.
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(
                    f"RetentionPolicy.{f.name} must be an integer >= 0, got {value!r}"
                )


BLOCKING_STATES = ("unknown", "missing_data")


@dataclass(frozen=True)
class BackupRecord:
    backup_id: str
    target: str
    started_at: datetime  # timezone-aware, UTC
    valid: bool  # has an authenticated manifest and its data object
    verified: bool = False  # passed restore verification
    kind: str = "full"  # full | schema | tables
    state: str = ""  # the catalog's state; "" means valid/incomplete from ``valid``
    problem: str | None = None  # why the state is unknown

    @property
    def effective_state(self) -> str:
        return self.state or ("valid" if self.valid else "incomplete")


@dataclass(frozen=True)
class RetentionDecision:
    backup_id: str
    target: str
    started_at: datetime
    keep: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class RetentionPlan:
    decisions: tuple[RetentionDecision, ...]  # targets by name, newest first
    blocked: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)  # target -> why nothing was deleted

    @property
    def to_delete(self) -> list[RetentionDecision]:
        return [d for d in self.decisions if not d.keep]

    @property
    def to_keep(self) -> list[RetentionDecision]:
        return [d for d in self.decisions if d.keep]

    def summary(self) -> str:
        if not self.decisions:
            return "retention plan: no backups"
        lines = [
            f"retention plan: {len(self.decisions)} backups, "
            f"{len(self.to_keep)} keep, {len(self.to_delete)} delete"
        ]
        for target, why in sorted(self.blocked.items()):
            lines.append(f"target {target}: RETENTION STOPPED, nothing deleted: {'; '.join(why)}")
        target = None
        for d in self.decisions:
            if d.target != target:
                target = d.target
                lines.append(f"target {target}:")
            action = "KEEP" if d.keep else "DELETE"
            lines.append(
                f"  {action:<6} {d.backup_id}  {d.started_at.isoformat()}  {'; '.join(d.reasons)}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "keep_count": len(self.to_keep),
            "delete_count": len(self.to_delete),
            "blocked": {t: list(w) for t, w in self.blocked.items()},
            "decisions": [
                {
                    "backup_id": d.backup_id,
                    "target": d.target,
                    "started_at": d.started_at.isoformat(),
                    "keep": d.keep,
                    "reasons": list(d.reasons),
                }
                for d in self.decisions
            ],
        }


# Bucket key functions; the key doubles as the human-readable reason suffix.
def _day(t: datetime) -> str:
    return t.date().isoformat()


def _week(t: datetime) -> str:
    iso = t.isocalendar()  # ISO year, not calendar year: 2025-12-29 is 2026-W01
    return f"{iso.year}-W{iso.week:02d}"


def _month(t: datetime) -> str:
    return f"{t.year}-{t.month:02d}"


def _to_utc(t: datetime, what: str) -> datetime:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(
            f"{what} is a naive datetime ({t.isoformat()}); "
            "pass timezone-aware UTC datetimes, e.g. datetime.now(timezone.utc)"
        )
    return t.astimezone(timezone.utc)


def _keep_slots(candidates: list[BackupRecord], policy: RetentionPolicy, reasons: dict[str, list[str]], label_kind: str) -> None:
    """GFS slots, the newest valid and the newest verified among ``candidates`` (newest first)."""
    granularities: list[tuple[str, int, Callable[[datetime], str]]] = [
        ("daily", policy.keep_daily, _day),
        ("weekly", policy.keep_weekly, _week),
        ("monthly", policy.keep_monthly, _month),
    ]
    for label, count, bucket_of in granularities:
        seen: set[str] = set()
        for b in candidates:
            if len(seen) >= count:
                break
            bucket = bucket_of(b.started_at)
            if bucket not in seen:  # newest-first, so the first hit is the bucket's newest
                seen.add(bucket)
                reasons[b.backup_id].append(f"{label} {bucket}{label_kind}")
    if candidates:
        reasons[candidates[0].backup_id].append(KEEP_NEWEST_VALID + label_kind)
    verified = [b for b in candidates if b.verified]
    if verified:
        reasons[verified[0].backup_id].append(KEEP_NEWEST_VERIFIED + label_kind)


def _plan_target(
    backups: list[BackupRecord], policy: RetentionPolicy, now: datetime, kept_kinds: tuple[str, ...]
) -> tuple[list[RetentionDecision], tuple[str, ...]]:
    newest_first = sorted(backups, key=lambda b: (b.started_at, b.backup_id), reverse=True)
    blocked = tuple(f"{b.backup_id}: {b.problem or b.effective_state}" for b in newest_first
                    if b.effective_state in BLOCKING_STATES)
    if blocked:
        why = (f"{KEEP_BLOCKED}: {len(blocked)} backup(s) in an unknown state",)
        return [RetentionDecision(b.backup_id, b.target, b.started_at, True, why) for b in newest_first], blocked

    reasons: dict[str, list[str]] = {b.backup_id: [] for b in newest_first}
    for kind in dict.fromkeys(("full", *kept_kinds)):
        candidates = [b for b in newest_first if b.effective_state == "valid" and b.kind == kind and b.started_at <= now]
        _keep_slots(candidates, policy, reasons, "" if kind == "full" else f" ({kind})")

    min_age = timedelta(days=policy.min_age_days)
    young = f"younger than {policy.min_age_days} days"
    decisions = []
    for b in newest_first:
        why = reasons[b.backup_id]
        state = b.effective_state
        if state == "writing":
            why.append(KEEP_WRITING)
        elif b.started_at > now:
            why.append(KEEP_FUTURE)
        elif now - b.started_at < min_age:
            why.append(young)
        keep = bool(why)
        if not keep:
            if state == "valid" and b.kind != "full":
                why.append(f"partial ({b.kind}) backup older than {policy.min_age_days} days")
            elif state == "valid":
                why.append(DELETE_NOT_NEEDED)
            elif policy.min_age_days:
                why.append(f"incomplete (no manifest, no writer) and older than {policy.min_age_days} days")
            else:
                why.append("incomplete (no manifest, no writer)")
        decisions.append(
            RetentionDecision(b.backup_id, b.target, b.started_at, keep, tuple(why))
        )
    return decisions, ()


def plan_retention(
    backups: Iterable[BackupRecord],
    policy: RetentionPolicy,
    now: datetime,
    policies_by_target: Mapping[str, RetentionPolicy] | None = None,
    kept_kinds_by_target: Mapping[str, tuple[str, ...]] | None = None,
) -> RetentionPlan:
    """Decide which backups to keep and which to delete (see the module docstring).

    Raises ValueError for naive datetimes and for a backup_id listed twice for
    the same target (deleting "by id" would then be ambiguous).
    """
    now = _to_utc(now, "now")
    by_target: dict[str, list[BackupRecord]] = defaultdict(list)
    ids: set[tuple[str, str]] = set()
    for b in backups:
        started = _to_utc(b.started_at, f"started_at of backup {b.backup_id!r}")
        if (b.target, b.backup_id) in ids:
            raise ValueError(f"backup {b.backup_id!r} listed twice for target {b.target!r}")
        ids.add((b.target, b.backup_id))
        by_target[b.target].append(replace(b, started_at=started))

    overrides = policies_by_target or {}
    kinds = kept_kinds_by_target or {}
    decisions: list[RetentionDecision] = []
    blocked: dict[str, tuple[str, ...]] = {}
    for target in sorted(by_target):
        planned, why = _plan_target(by_target[target], overrides.get(target, policy), now, kinds.get(target, ("full",)))
        decisions += planned
        if why:
            blocked[target] = why
    return RetentionPlan(tuple(decisions), blocked)
