"""Tests for the GFS retention planner (pure logic, no I/O)."""

from __future__ import annotations

import json
import random
from datetime import date, datetime, timedelta, timezone

import pytest

from dbops_pipelines.backup.retention import (
    BackupRecord,
    RetentionPlan,
    RetentionPolicy,
    plan_retention,
)

UTC = timezone.utc
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)  # a Friday, ISO week 2026-W47


def at(day: str, hour: int = 1, minute: int = 0) -> datetime:
    return datetime.fromisoformat(day).replace(hour=hour, minute=minute, tzinfo=UTC)


def rec(ts: datetime, target: str = "db", valid: bool = True, verified: bool = False,
        backup_id: str | None = None) -> BackupRecord:
    return BackupRecord(backup_id or f"{target}-{ts:%Y%m%dT%H%M%S}", target, ts, valid, verified)


def daily_series(first: str, last: str, target: str = "db", hour: int = 1) -> list[BackupRecord]:
    d, end = date.fromisoformat(first), date.fromisoformat(last)
    out = []
    while d <= end:
        out.append(rec(datetime(d.year, d.month, d.day, hour, tzinfo=UTC), target))
        d += timedelta(days=1)
    return out


def kept_days(plan: RetentionPlan, target: str = "db") -> set[str]:
    return {d.started_at.date().isoformat() for d in plan.to_keep if d.target == target}


def by_id(plan: RetentionPlan) -> dict[str, object]:
    return {d.backup_id: d for d in plan.decisions}


# --- two years of dailies -------------------------------------------------

MONTH_ENDS = {
    "2025-12-31", "2026-01-31", "2026-02-28", "2026-03-31", "2026-04-30", "2026-05-31",
    "2026-06-30", "2026-07-31", "2026-08-31", "2026-09-30", "2026-10-31",
}


def test_two_years_of_dailies_default_policy():
    backups = daily_series("2024-11-21", "2026-11-20")
    plan = plan_retention(backups, RetentionPolicy(), NOW)
    # Young: NOW - 30 days = 2026-10-21 12:00, so the 01:00 backups from 10-22 on.
    young = {(date(2026, 10, 22) + timedelta(days=i)).isoformat() for i in range(30)}
    # Dailies and weeklies (11-20, Sundays 11-15/11-08/11-01) are all young;
    # monthlies are the last day of each of the 11 previous months plus 11-20.
    assert kept_days(plan) == young | MONTH_ENDS
    assert len(plan.to_keep) == 30 + 10
    assert len(plan.decisions) == len(backups)


def test_two_years_of_dailies_without_min_age():
    backups = daily_series("2024-11-21", "2026-11-20")
    plan = plan_retention(backups, RetentionPolicy(min_age_days=0), NOW)
    dailies = {f"2026-11-{d}" for d in range(14, 21)}
    weeklies = {"2026-11-20", "2026-11-15", "2026-11-08", "2026-11-01"}  # Fri + 3 Sundays
    assert kept_days(plan) == dailies | weeklies | MONTH_ENDS | {"2026-11-20"}
    assert len(plan.to_keep) == 7 + 2 + 11
    reasons = {d.started_at.date().isoformat(): d.reasons for d in plan.decisions}
    assert reasons["2026-11-20"] == (
        "daily 2026-11-20", "weekly 2026-W47", "monthly 2026-11", "newest valid backup")
    assert reasons["2026-11-15"] == ("daily 2026-11-15", "weekly 2026-W46")
    assert reasons["2026-11-01"] == ("weekly 2026-W44",)
    assert reasons["2026-02-28"] == ("monthly 2026-02",)
    assert reasons["2026-11-13"] == ("not needed by daily/weekly/monthly policy",)


# --- gaps, several per day, ISO weeks ---------------------------------------

def test_gaps_do_not_consume_slots():
    # Monthly only, with empty months in between: the 3 most recent months that
    # *have* a backup are kept, however far apart.
    days = ["2023-01-10", "2023-01-20", "2024-06-05", "2025-02-01", "2025-02-27", "2026-09-15"]
    plan = plan_retention([rec(at(d)) for d in days],
                          RetentionPolicy(keep_daily=0, keep_weekly=0, keep_monthly=3), NOW)
    assert kept_days(plan) == {"2026-09-15", "2025-02-27", "2024-06-05"}


def test_daily_slots_skip_missing_days():
    days = ["2026-09-01", "2026-09-03", "2026-09-04", "2026-09-10", "2026-09-20"]
    plan = plan_retention([rec(at(d)) for d in days],
                          RetentionPolicy(keep_daily=3, keep_weekly=0, keep_monthly=0), NOW)
    assert kept_days(plan) == {"2026-09-20", "2026-09-10", "2026-09-04"}


def test_several_per_day_keeps_newest_of_each_day():
    backups = [rec(at(d, h)) for d in ("2026-09-01", "2026-09-02", "2026-09-03")
               for h in (0, 6, 12, 18)]
    policy = RetentionPolicy(keep_daily=2, keep_weekly=0, keep_monthly=0, min_age_days=0)
    plan = plan_retention(backups, policy, NOW)
    assert sorted(d.started_at for d in plan.to_keep) == [at("2026-09-02", 18), at("2026-09-03", 18)]


def test_ties_broken_by_backup_id_and_input_order_irrelevant():
    ts = at("2026-09-01")
    backups = [rec(ts, backup_id=i) for i in ("b", "a", "c")] + [rec(at("2026-08-01"), backup_id="z")]
    policy = RetentionPolicy(keep_daily=1, keep_weekly=0, keep_monthly=0, min_age_days=0)
    plans = set()
    for seed in range(10):
        shuffled = backups[:]
        random.Random(seed).shuffle(shuffled)
        plan = plan_retention(shuffled, policy, NOW)
        plans.add(plan)
    assert len(plans) == 1
    (plan,) = plans
    assert [d.backup_id for d in plan.decisions] == ["c", "b", "a", "z"]
    assert [d.backup_id for d in plan.to_keep] == ["c"]


def test_iso_week_across_year_boundary():
    # 2026-01-01 is a Thursday, so 2025-12-29..31 belong to 2026-W01.
    days = ["2025-12-27", "2025-12-28", "2025-12-29", "2025-12-30", "2026-01-02"]
    plan = plan_retention([rec(at(d)) for d in days],
                          RetentionPolicy(keep_daily=0, keep_weekly=2, keep_monthly=0), NOW)
    assert kept_days(plan) == {"2026-01-02", "2025-12-28"}
    reasons = {d.started_at.date().isoformat(): d.reasons for d in plan.to_keep}
    assert reasons["2025-12-28"] == ("weekly 2025-W52",)


def test_non_utc_aware_input_is_bucketed_in_utc():
    plus2 = timezone(timedelta(hours=2))
    late = BackupRecord("late", "db", datetime(2026, 9, 2, 1, 0, tzinfo=plus2), True)  # 09-01 23:00Z
    early = rec(at("2026-09-01", 10), backup_id="early")
    plan = plan_retention([late, early],
                          RetentionPolicy(keep_daily=1, keep_weekly=0, keep_monthly=0), NOW)
    assert [d.backup_id for d in plan.to_keep] == ["late"]
    assert plan.to_keep[0].reasons[0] == "daily 2026-09-01"
    assert plan.to_keep[0].started_at.utcoffset() == timedelta(0)


# --- targets ------------------------------------------------------------------

def test_multiple_targets_with_per_target_policies():
    backups = (daily_series("2026-01-01", "2026-11-20", "orders")
               + daily_series("2026-01-01", "2026-11-20", "analytics")
               + daily_series("2026-01-01", "2026-11-20", "auth"))
    base = RetentionPolicy(keep_daily=2, keep_weekly=0, keep_monthly=0, min_age_days=0)
    overrides = {"analytics": RetentionPolicy(keep_daily=0, keep_weekly=0, keep_monthly=2, min_age_days=0),
                 "unknown": RetentionPolicy(keep_daily=99)}
    plan = plan_retention(backups, base, NOW, overrides)
    assert kept_days(plan, "orders") == {"2026-11-19", "2026-11-20"}
    assert kept_days(plan, "auth") == {"2026-11-19", "2026-11-20"}
    assert kept_days(plan, "analytics") == {"2026-10-31", "2026-11-20"}
    # Sorted by target, newest first within a target.
    targets = [d.target for d in plan.decisions]
    assert targets == sorted(targets)
    for t in ("analytics", "auth", "orders"):
        times = [d.started_at for d in plan.decisions if d.target == t]
        assert times == sorted(times, reverse=True)


def test_targets_are_independent_for_newest_valid():
    old = rec(at("2021-01-01"), "legacy")
    backups = [old] + daily_series("2026-10-01", "2026-11-20", "main")
    plan = plan_retention(backups, RetentionPolicy(0, 0, 0, 0), NOW)
    assert by_id(plan)[old.backup_id].keep
    assert kept_days(plan, "main") == {"2026-11-20"}


# --- protections -------------------------------------------------------------

def test_min_age_protects_everything_young_even_invalid():
    backups = [rec(NOW - timedelta(days=d, hours=1), valid=d % 2 == 0) for d in range(40)]
    plan = plan_retention(backups, RetentionPolicy(0, 0, 0, min_age_days=30), NOW)
    for d in plan.decisions:
        age = NOW - d.started_at
        assert d.keep == (age < timedelta(days=30) or d.started_at == max(b.started_at for b in backups if b.valid))
        if age < timedelta(days=30):
            assert "younger than 30 days" in d.reasons


def test_min_age_boundary_is_exclusive():
    exactly = rec(NOW - timedelta(days=30), valid=False, backup_id="exactly")
    just_under = rec(NOW - timedelta(days=30) + timedelta(seconds=1), valid=False, backup_id="under")
    plan = plan_retention([exactly, just_under], RetentionPolicy(), NOW)
    assert not by_id(plan)["exactly"].keep
    assert by_id(plan)["exactly"].reasons == ("incomplete (no manifest, no writer) and older than 30 days",)
    assert by_id(plan)["under"].keep
    no_min_age = plan_retention([exactly], RetentionPolicy(min_age_days=0), NOW)
    assert no_min_age.to_delete[0].reasons == ("incomplete (no manifest, no writer)",)


def test_newest_valid_kept_even_when_five_years_old():
    old = [rec(at("2021-11-01")), rec(at("2021-10-01"))]
    failed = [rec(at("2026-11-19"), valid=False), rec(at("2024-01-01"), valid=False)]
    plan = plan_retention(old + failed, RetentionPolicy(0, 0, 0, 30), NOW)
    keep = {d.backup_id: d.reasons for d in plan.to_keep}
    assert keep == {old[0].backup_id: ("newest valid backup",),
                    failed[0].backup_id: ("younger than 30 days",)}


def test_newest_verified_kept():
    backups = [rec(at("2025-01-05"), verified=True, backup_id="verified-old"),
               rec(at("2025-03-01"), verified=True, backup_id="verified-new"),
               rec(at("2025-06-01"), valid=False, verified=True, backup_id="broken"),  # invalid: not trusted
               rec(at("2025-09-01"), backup_id="unverified-new")]
    plan = plan_retention(backups, RetentionPolicy(0, 0, 0, 30), NOW)
    decisions = by_id(plan)
    assert decisions["verified-new"].reasons == ("newest verified backup",)
    assert decisions["unverified-new"].reasons == ("newest valid backup",)
    assert not decisions["verified-old"].keep
    assert not decisions["broken"].keep


def test_invalid_leftovers_never_fill_gfs_slots():
    backups = [rec(at("2026-09-01", 1), backup_id="ok"),
               rec(at("2026-09-01", 5), valid=False, backup_id="failed-same-day"),
               rec(at("2026-08-01", 5), valid=False, backup_id="failed-alone")]
    plan = plan_retention(backups, RetentionPolicy(min_age_days=30), NOW)
    d = by_id(plan)
    assert d["ok"].keep and "daily 2026-09-01" in d["ok"].reasons
    for bid in ("failed-same-day", "failed-alone"):
        assert not d[bid].keep
        assert d[bid].reasons == ("incomplete (no manifest, no writer) and older than 30 days",)


def test_in_progress_backup_is_young_and_kept():
    running = rec(NOW - timedelta(minutes=5), valid=False, backup_id="running")
    plan = plan_retention([running], RetentionPolicy(), NOW)
    assert plan.to_keep[0].reasons == ("younger than 30 days",)


def test_zero_policy_keeps_only_newest_valid_and_young():
    backups = daily_series("2026-01-01", "2026-11-20")
    plan = plan_retention(backups, RetentionPolicy(0, 0, 0, 10), NOW)
    expected = {(date(2026, 11, 11) + timedelta(days=i)).isoformat() for i in range(10)}
    assert kept_days(plan) == expected
    assert "newest valid backup" in by_id(plan)[backups[-1].backup_id].reasons
    all_zero = plan_retention(backups, RetentionPolicy(0, 0, 0, 0), NOW)
    assert [d.backup_id for d in all_zero.to_keep] == [backups[-1].backup_id]


def test_future_dated_backups_are_kept_and_do_not_count_as_newest():
    future = rec(NOW + timedelta(days=3), backup_id="future")
    future_bad = rec(NOW + timedelta(hours=1), valid=False, backup_id="future-bad")
    present = rec(at("2026-06-01"), verified=True, backup_id="present")
    older = rec(at("2026-05-01"), backup_id="older")
    plan = plan_retention([future, future_bad, present, older], RetentionPolicy(0, 0, 0, 0), NOW)
    d = by_id(plan)
    assert d["future"].reasons == ("in the future (clock skew?)",)
    assert d["future-bad"].reasons == ("in the future (clock skew?)",)
    assert d["present"].reasons == ("newest valid backup", "newest verified backup")
    assert not d["older"].keep
    assert [x.backup_id for x in plan.decisions] == ["future", "future-bad", "present", "older"]


# --- validation and output ---------------------------------------------------

@pytest.mark.parametrize("field", ["keep_daily", "keep_weekly", "keep_monthly", "min_age_days"])
@pytest.mark.parametrize("bad", [-1, 1.5, True, "7", None])
def test_policy_validation(field, bad):
    with pytest.raises(ValueError, match=field):
        RetentionPolicy(**{field: bad})


def test_naive_datetimes_rejected():
    with pytest.raises(ValueError, match="timezone-aware UTC"):
        plan_retention([], RetentionPolicy(), datetime(2026, 11, 20))
    naive = BackupRecord("x", "db", datetime(2026, 1, 1), True)
    with pytest.raises(ValueError, match="timezone-aware UTC"):
        plan_retention([naive], RetentionPolicy(), NOW)


def test_duplicate_id_in_a_target_rejected():
    with pytest.raises(ValueError, match="twice"):
        plan_retention([rec(at("2026-01-01"), backup_id="x"), rec(at("2026-02-01"), backup_id="x")],
                       RetentionPolicy(), NOW)
    # Same id in two targets is fine.
    plan = plan_retention([rec(at("2026-01-01"), "a", backup_id="x"), rec(at("2026-01-01"), "b", backup_id="x")],
                          RetentionPolicy(), NOW)
    assert len(plan.decisions) == 2


def test_empty_input():
    plan = plan_retention([], RetentionPolicy(), NOW)
    assert plan.decisions == () and plan.to_keep == [] and plan.to_delete == []
    assert "no backups" in plan.summary()
    assert plan.to_dict()["decisions"] == []
    assert plan_retention(iter(()), RetentionPolicy(), NOW, {}).decisions == ()


def test_summary_and_to_dict_mention_every_backup():
    backups = daily_series("2026-06-01", "2026-11-20", "a") + daily_series("2026-10-01", "2026-11-20", "b")
    backups.append(rec(at("2026-07-04"), "b", valid=False))
    plan = plan_retention(backups, RetentionPolicy(), NOW)
    text = plan.summary()
    lines = text.splitlines()
    assert lines[0] == f"retention plan: {len(backups)} backups, {len(plan.to_keep)} keep, {len(plan.to_delete)} delete"
    for d in plan.decisions:
        line = next(line for line in lines if f" {d.backup_id} " in line)
        assert line.split()[0] == ("KEEP" if d.keep else "DELETE")
        assert d.started_at.isoformat() in line and "; ".join(d.reasons) in line
    assert "target a:" in text and "target b:" in text
    data = json.loads(json.dumps(plan.to_dict()))
    assert len(data["decisions"]) == len(backups)
    assert data["delete_count"] == len(plan.to_delete)
    first = data["decisions"][0]
    assert datetime.fromisoformat(first["started_at"]) == plan.decisions[0].started_at
    assert isinstance(first["reasons"], list)


# --- randomized invariants -----------------------------------------------------

def _bucket_keys(t: datetime) -> dict[str, str]:
    y, w, _ = t.isocalendar()
    return {"daily": t.strftime("%Y-%m-%d"), "weekly": f"{y}-W{w:02d}", "monthly": t.strftime("%Y-%m")}


def oracle_gfs_ids(backups: list[BackupRecord], policy: RetentionPolicy, now: datetime) -> set[str]:
    """Reference GFS selection written set-wise (not streaming like the module)."""
    valid = [b for b in backups if b.valid and b.started_at <= now]
    keep = set()
    for label, n in (("daily", policy.keep_daily), ("weekly", policy.keep_weekly),
                     ("monthly", policy.keep_monthly)):
        buckets = {}
        for b in valid:
            buckets.setdefault(_bucket_keys(b.started_at)[label], []).append(b)
        for key in sorted(buckets, reverse=True)[:n]:
            keep.add(max(buckets[key], key=lambda b: (b.started_at, b.backup_id)).backup_id)
    return keep


def random_calendar(rnd: random.Random) -> list[BackupRecord]:
    backups = []
    for target in ("t1", "t2")[: rnd.randint(1, 2)]:
        start = NOW - timedelta(days=rnd.randint(0, 900))
        t, i = start, 0
        while t < NOW + timedelta(days=2):
            if rnd.random() < 0.9:
                backups.append(BackupRecord(
                    f"{target}-{i:04d}", target, t.replace(microsecond=0),
                    valid=rnd.random() < 0.85, verified=rnd.random() < 0.1))
                i += 1
            # Mix of several-per-day, daily and long gaps.
            t += timedelta(hours=rnd.choice([1, 6, 24, 24, 24, 72, 24 * 20, 24 * 90]) * rnd.uniform(0.5, 1.5))
    rnd.shuffle(backups)
    return backups


def random_policy(rnd: random.Random) -> RetentionPolicy:
    return RetentionPolicy(rnd.randint(0, 10), rnd.randint(0, 6), rnd.randint(0, 14), rnd.choice([0, 1, 7, 30]))


def test_randomized_invariants():
    for seed in range(300):
        rnd = random.Random(seed)
        backups = random_calendar(rnd)
        small = random_policy(rnd)
        big = RetentionPolicy(small.keep_daily + rnd.randint(0, 3), small.keep_weekly + rnd.randint(0, 3),
                              small.keep_monthly + rnd.randint(0, 3), small.min_age_days + rnd.choice([0, 7]))
        plan = plan_retention(backups, small, NOW)
        plan_big = plan_retention(backups, big, NOW)
        ctx = f"seed={seed} policy={small}"

        # Covers every input exactly once.
        assert sorted((d.target, d.backup_id) for d in plan.decisions) == \
            sorted((b.target, b.backup_id) for b in backups), ctx
        decided = {(d.target, d.backup_id): d for d in plan.decisions}

        for target in {b.target for b in backups}:
            mine = [b for b in backups if b.target == target]
            past_valid = [b for b in mine if b.valid and b.started_at <= NOW]
            newest = max(past_valid, key=lambda b: (b.started_at, b.backup_id), default=None)
            newest_verified = max((b for b in past_valid if b.verified),
                                  key=lambda b: (b.started_at, b.backup_id), default=None)
            for must in (newest, newest_verified):
                if must is not None:
                    assert decided[(target, must.backup_id)].keep, ctx

            gfs = oracle_gfs_ids(mine, small, NOW)
            min_age = timedelta(days=small.min_age_days)
            for b in mine:
                d = decided[(target, b.backup_id)]
                young = NOW - b.started_at < min_age
                expected = (b.started_at > NOW or young or b.backup_id in gfs
                            or b is newest or b is newest_verified)
                assert d.keep == expected, (ctx, b)
                assert d.reasons, ctx
                if not b.valid:
                    assert not any(r.split()[0] in ("daily", "weekly", "monthly") for r in d.reasons), ctx

            # GFS slots are bounded by the policy.
            gfs_old = [b for b in mine if b.backup_id in gfs and NOW - b.started_at >= min_age]
            assert len(gfs_old) <= small.keep_daily + small.keep_weekly + small.keep_monthly, ctx
            slot_words = ("daily", "weekly", "monthly")
            gfs_by_reason = [d for d in plan.decisions if d.target == target
                             and NOW - d.started_at >= min_age
                             and any(r.split()[0] in slot_words for r in d.reasons)]
            assert len(gfs_by_reason) == len(gfs_old), ctx

        # Monotonicity: a bigger policy keeps a superset.
        kept_small = {(d.target, d.backup_id) for d in plan.to_keep}
        kept_big = {(d.target, d.backup_id) for d in plan_big.to_keep}
        assert kept_small <= kept_big, ctx

        # Never deletes anything young or future-dated.
        for d in plan.to_delete:
            assert NOW - d.started_at >= timedelta(days=small.min_age_days), ctx


def test_partial_backups_never_fill_slots_nor_count_as_newest():
    now = datetime(2026, 11, 24, tzinfo=timezone.utc)
    full_old = BackupRecord("full-old", "app", now - timedelta(days=400), True)
    schema_new = BackupRecord("schema-new", "app", now - timedelta(days=40), True, kind="schema")
    schema_young = BackupRecord("schema-young", "app", now - timedelta(days=2), True, kind="schema")
    plan = plan_retention([full_old, schema_new, schema_young], RetentionPolicy(), now)
    by_id = {d.backup_id: d for d in plan.decisions}
    assert by_id["full-old"].keep and "newest valid backup" in by_id["full-old"].reasons
    assert not by_id["schema-new"].keep and by_id["schema-new"].reasons == ("partial (schema) backup older than 30 days",)
    assert by_id["schema-young"].keep
