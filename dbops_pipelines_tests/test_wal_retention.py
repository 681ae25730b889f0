"""Retention of base backups and the WAL archive (docs/pitr.md#retention).

Unit tests of the pure planner (GFS over base backups on several days, by count, timeline
switches and a rewind onto an earlier position, no valid base backup, an unknown one, the newest
one never deleted, history files kept), and one test on a local store with real sealed manifests
and objects at the archive's keys, through `dbops wal retention`: retention keeps exactly the
WAL its base backups need, and the dry run deletes nothing. A delete failing midway stops the
run with a half-deleted base backup never listed as valid and no WAL deleted."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from dbops_pipelines import cli_wal
from dbops_pipelines.backup.catalog import INCOMPLETE, MISSING_DATA, UNKNOWN, VALID, WRITING
from dbops_pipelines.backup.retention import RetentionPolicy
from dbops_pipelines.config import FleetConfig, load_config
from dbops_pipelines.context import FleetContext
from dbops_pipelines.errors import StorageError
from dbops_pipelines.storage.base import ObjectInfo
from dbops_pipelines.wal.basebackup import (BaseBackupEntry, BaseBackupManifest, cluster_safe, data_key,
                                            list_base_backups, manifest_key, new_base_backup_id, seal_base_manifest)
from dbops_pipelines.wal.naming import DEFAULT_SEGMENT_SIZE, Segment, archive_key, format_lsn
from dbops_pipelines.wal.retention import (WalRetentionPolicy, apply_wal_retention, plan_wal_retention, start_segment,
                                           wal_retention_policy)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
SEG = DEFAULT_SEGMENT_SIZE
SYSID = "7300000000000000001"
CLUSTER = "main"
NOTHING_YOUNG = RetentionPolicy(keep_daily=7, keep_weekly=4, keep_monthly=12, min_age_days=0)


def seg(tl: int, n: int) -> str:
    return Segment(tl, n).name(SEG)


def lsn_in(n: int, offset: int = 0x28) -> str:
    return format_lsn(n * SEG + offset)


def manifest(backup_id: str, tl: int, n: int, started: datetime, *, cluster: str = CLUSTER, key_id: str = "k",
             stored_bytes: int = 10, sysid: str = SYSID, label_file: str | None = None) -> BaseBackupManifest:
    start = lsn_in(n)
    label = (f"START WAL LOCATION: {start} (file {label_file or seg(tl, n)})\nCHECKPOINT LOCATION: {lsn_in(n, 0x60)}\n"
             f"BACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: {started:%Y-%m-%d %H:%M:%S} UTC\n"
             f"LABEL: dbops {backup_id}\nSTART TIMELINE: {tl}\n")
    return BaseBackupManifest(
        backup_id=backup_id, cluster=cluster, target="app", server="127.0.0.1:5432", server_version="15.8",
        pg_basebackup_version="15.8", system_identifier=sysid, timeline=tl, start_lsn=start,
        checkpoint_lsn=lsn_in(n, 0x60), stop_lsn=lsn_in(n + 1), stop_timeline=tl, start_time=started.isoformat(),
        stop_time=(started + timedelta(minutes=5)).isoformat(), started_at=started.isoformat(),
        finished_at=(started + timedelta(minutes=5)).isoformat(), raw_bytes=100, stored_bytes=stored_bytes,
        sha256="0" * 64, object_key=data_key(cluster, backup_id), location="file:///x", compression="zstd-1",
        encryption="aes-256-gcm-chunked", key_id=key_id, backup_manifest_sha256="1" * 64, backup_manifest_bytes=1,
        backup_label=label, wal_ranges=[{"Timeline": tl, "Start-LSN": start, "End-LSN": lsn_in(n + 1)}])


def entry(tl: int, n: int, days_ago: float, state: str = VALID, **kw) -> BaseBackupEntry:
    started = NOW - timedelta(days=days_ago)
    bid = new_base_backup_id(CLUSTER, started, f"{tl:02x}{n:02x}")
    m = manifest(bid, tl, n, started, **kw) if state in (VALID, MISSING_DATA) else None
    return BaseBackupEntry(bid, CLUSTER, state, started, (manifest_key(CLUSTER, bid), data_key(CLUSTER, bid)), m)


def obj(name: str, size: int = 100) -> ObjectInfo:
    return ObjectInfo(archive_key(CLUSTER, name), size, NOW)


def segments(tl: int, first: int, last: int) -> list[ObjectInfo]:
    return [obj(seg(tl, n)) for n in range(first, last + 1)]


def deleted_names(plan) -> list[str]:
    return [o.name for o in plan.wal_delete]


def kept_names(plan) -> set[str]:
    return {o.name for o in plan.wal_keep}


# --- the planner ------------------------------------------------------------------------------

def test_gfs_over_base_backups_on_several_days():
    # A base backup every day for 20 days, segment 10*i at day 20-i; daily backups kept 3, weekly 2.
    entries = [entry(1, 10 * i + 5, 20 - i) for i in range(20)]
    archive = segments(1, 1, 200)
    policy = RetentionPolicy(keep_daily=3, keep_weekly=2, keep_monthly=0, min_age_days=0)
    plan = plan_wal_retention(entries, archive, policy, NOW)
    kept = {d.backup_id: d.reasons for d in plan.base_to_keep}
    newest = sorted(entries, key=lambda e: e.started_at, reverse=True)
    assert set(kept) >= {e.backup_id for e in newest[:3]}
    assert any("daily" in r for r in kept[newest[0].backup_id]) and any("newest valid" in r for r in kept[newest[0].backup_id])
    assert any(any("weekly" in r for r in why) for why in kept.values())
    assert len(plan.base_to_delete) == len(entries) - len(kept) > 10
    # The cut-off is the start of the oldest kept base backup; every segment before it goes, it stays.
    oldest_kept = min((e for e in entries if e.backup_id in kept), key=lambda e: e.started_at)
    cutoff_n = int(oldest_kept.manifest.start_lsn.split("/")[1], 16) // SEG
    assert plan.cutoff_backup_id == oldest_kept.backup_id and plan.cutoff_segment == seg(1, cutoff_n)
    assert deleted_names(plan) == [seg(1, n) for n in range(1, cutoff_n)]       # oldest first
    assert kept_names(plan) == {seg(1, n) for n in range(cutoff_n, 201)}
    assert not plan.blocked and plan.wal_delete_bytes == 100 * (cutoff_n - 1)
    # min_age_days protects young backups as for logical backups: with the default 30, nothing here goes.
    young = plan_wal_retention(entries, archive, RetentionPolicy(keep_daily=3, keep_weekly=0, keep_monthly=0), NOW)
    assert not young.base_to_delete and young.cutoff_segment == seg(1, 5) and deleted_names(young) == [seg(1, n) for n in range(1, 5)]


def test_by_count_keeps_the_newest_n():
    entries = [entry(1, 10 * i + 2, 40 - i) for i in range(5)]     # starts at 2, 12, 22, 32, 42
    plan = plan_wal_retention(entries, segments(1, 1, 50), WalRetentionPolicy(NOTHING_YOUNG, keep_last=2), NOW)
    assert [d.keep for d in plan.base] == [True, True, False, False, False]
    assert all("newest 2" in d.reasons[0] for d in plan.base_to_keep)
    assert all("not among the newest 2" in d.reasons[-1] for d in plan.base_to_delete)
    assert plan.cutoff_segment == seg(1, 32) and deleted_names(plan) == [seg(1, n) for n in range(1, 32)]
    with pytest.raises(ValueError):
        WalRetentionPolicy(keep_last=0)


def test_timeline_switch():
    # Timeline 2 branched from 1 inside segment 12; TL1 went on to 20 (archived before the switch
    # was noticed), TL2 runs 12..25. A base backup on TL1 at 5 (old) and one on TL2 at 15 (kept).
    archive = [*segments(1, 1, 20), obj(seg(1, 12) + ".partial"), obj("00000002.history", 40),
               *segments(2, 12, 25), obj(f"{seg(1, 5)}.00000028.backup", 3), obj(f"{seg(2, 15)}.00000028.backup", 3)]
    old, new = entry(1, 5, 20), entry(2, 15, 1)
    plan = plan_wal_retention([old, new], archive, WalRetentionPolicy(NOTHING_YOUNG, keep_last=1), NOW)
    assert [d.backup_id for d in plan.base_to_delete] == [old.backup_id]
    assert plan.cutoff_segment == seg(2, 15)
    # Before position 15 everything goes, on both timelines (TL1's .partial and the old .backup file too);
    # from 15 on everything stays, TL1's tail included (harmless), and the history file always.
    gone = deleted_names(plan)
    assert set(gone) == ({seg(1, n) for n in range(1, 15)} | {seg(2, n) for n in range(12, 15)}
                         | {seg(1, 12) + ".partial", f"{seg(1, 5)}.00000028.backup"})
    assert kept_names(plan) == ({seg(1, n) for n in range(15, 21)} | {seg(2, n) for n in range(15, 26)}
                                | {"00000002.history", f"{seg(2, 15)}.00000028.backup"})
    positions = [o.position for o in plan.wal_delete]
    assert positions == sorted(positions)                                      # oldest first


def test_rewound_timeline_keeps_what_the_earlier_position_needs():
    # A PITR rewound the cluster to position 14 on TL2; the newest base backup (TL2, at 16) starts
    # before the older kept one (TL1, at 20): the cut-off is the smaller position, not the older time.
    archive = [*segments(1, 1, 22), obj("00000002.history"), *segments(2, 14, 30)]
    tl1, tl2 = entry(1, 20, 3), entry(2, 16, 1)
    plan = plan_wal_retention([tl1, tl2], archive, NOTHING_YOUNG, NOW)
    assert not plan.base_to_delete and plan.cutoff_segment == seg(2, 16) and plan.cutoff_backup_id == tl2.backup_id
    assert {seg(2, n) for n in range(16, 31)} <= kept_names(plan)
    assert set(deleted_names(plan)) == {seg(1, n) for n in range(1, 16)} | {seg(2, 14), seg(2, 15)}


def test_no_valid_base_backup_deletes_no_wal():
    archive = segments(1, 1, 30)
    for entries in ([], [entry(1, 5, 60, state=INCOMPLETE)], [entry(1, 5, 1, state=WRITING)]):
        plan = plan_wal_retention(entries, archive, NOTHING_YOUNG, NOW)
        assert not plan.wal_delete and plan.cutoff_segment is None and len(plan.wal_keep) == 30
        assert "no valid base backup" in plan.wal_note and not plan.blocked
    # The old incomplete leftovers themselves go, as for logical backups.
    plan = plan_wal_retention([entry(1, 5, 60, state=INCOMPLETE)], archive, NOTHING_YOUNG, NOW)
    assert len(plan.base_to_delete) == 1


@pytest.mark.parametrize("state", [UNKNOWN, MISSING_DATA])
def test_unknown_state_blocks_everything(state):
    entries = [entry(1, 5, 90), entry(1, 10, 60), entry(1, 15, 40, state=state), entry(1, 20, 1)]
    plan = plan_wal_retention(entries, segments(1, 1, 30), WalRetentionPolicy(NOTHING_YOUNG, keep_last=1), NOW)
    assert plan.blocked and "unknown state" in plan.blocked[0]
    assert not plan.base_to_delete and not plan.wal_delete and len(plan.wal_keep) == 30
    assert "RETENTION STOPPED" in plan.summary()


def test_untrustworthy_start_or_foreign_cluster_blocks():
    archive = segments(1, 1, 30)
    policy = WalRetentionPolicy(NOTHING_YOUNG, keep_last=1)
    lying = entry(1, 5, 90, label_file=seg(1, 6))           # label and manifest disagree
    plan = plan_wal_retention([lying, entry(1, 20, 1)], archive, policy, NOW)
    assert plan.blocked and "cannot be established" in plan.blocked[0] and not plan.wal_delete and not plan.base_to_delete
    foreign = entry(1, 5, 90, sysid="1")
    plan = plan_wal_retention([foreign, entry(1, 20, 1)], archive, policy, NOW, system_identifier=SYSID)
    assert plan.blocked and "system identifier" in plan.blocked[0] and not plan.wal_delete
    plan = plan_wal_retention([entry(1, 20, 1)], archive, policy, NOW, blocked_by=["archive.info cannot be trusted"])
    assert plan.blocked == ("archive.info cannot be trusted",) and not plan.wal_delete


def test_newest_base_backup_and_its_wal_never_deleted():
    keep_nothing = RetentionPolicy(keep_daily=0, keep_weekly=0, keep_monthly=0, min_age_days=0)
    entries = [entry(1, 5, 400), entry(1, 9, 300), entry(1, 12, 200, state=INCOMPLETE)]
    plan = plan_wal_retention(entries, segments(1, 1, 20), keep_nothing, NOW)
    [kept] = plan.base_to_keep
    assert kept.backup_id == entries[1].backup_id and "newest valid backup" in kept.reasons
    assert plan.cutoff_segment == seg(1, 9) and kept_names(plan) == {seg(1, n) for n in range(9, 21)}
    # A backup dated in the future (clock skew) is kept but does not take the newest's protection.
    future = entry(1, 15, -2)
    plan = plan_wal_retention([*entries, future], segments(1, 1, 20), keep_nothing, NOW)
    assert {d.backup_id for d in plan.base_to_keep} == {entries[1].backup_id, future.backup_id}
    assert plan.cutoff_segment == seg(1, 9)


def test_history_files_always_kept_and_foreign_objects_never_touched():
    archive = [obj("00000001.history"), obj("00000002.history"), *segments(2, 1, 10),
               obj(f"{seg(2, 3)}.00000028.backup"), obj(f"{seg(2, 8)}.000000A0.backup"),
               ObjectInfo(f"wal/{CLUSTER}/archive/0000000200000000/notes.txt", 5, NOW),
               ObjectInfo(f"wal/{CLUSTER}/archive/wronggroup/{seg(2, 1)}.zst.aes", 5, NOW)]
    plan = plan_wal_retention([entry(2, 8, 1)], archive, NOTHING_YOUNG, NOW)
    assert {"00000001.history", "00000002.history", f"{seg(2, 8)}.000000A0.backup"} <= kept_names(plan)
    assert deleted_names(plan) == [seg(2, 1), seg(2, 2), seg(2, 3), f"{seg(2, 3)}.00000028.backup",
                                   seg(2, 4), seg(2, 5), seg(2, 6), seg(2, 7)]
    assert len(plan.unrecognised) == 2 and all(k not in {o.key for o in plan.wal_delete} for k in plan.unrecognised)
    text = plan.summary()
    assert "DELETE 8 object(s)" in text and f"{seg(2, 1)} .. {seg(2, 7)}" in text and "history files are always kept" in text


def test_start_segment_other_segment_sizes():
    m = manifest("main-20261201T000000Z-0001", 1, 0, NOW)
    m.start_lsn, m.backup_label = "0/5000028", "START TIMELINE: 1\n"   # a label without the file name
    with pytest.raises(ValueError, match="segment size is unknown"):
        start_segment(m)
    assert start_segment(m, 1 << 20) == "000000010000000000000050"        # 1 MiB segments
    assert start_segment(m, SEG) == seg(1, 5)
    labelled = manifest("main-20261201T000000Z-0002", 1, 5, NOW)
    assert start_segment(labelled) == start_segment(labelled, SEG) == seg(1, 5)
    with pytest.raises(ValueError, match="does not hold"):
        start_segment(labelled, 1 << 20)                                   # archive.info disagrees
    with pytest.raises(ValueError):
        plan_wal_retention([], [], NOTHING_YOUNG, datetime(2026, 1, 1))


def test_policy_from_config_key_by_key_and_the_larger_wins():
    cfg = FleetConfig.model_validate({
        "defaults": {"backup": {"retention": {"keep_daily": 5, "keep_weekly": 2, "keep_monthly": 6, "min_age_days": 20}}},
        "clusters": {"main": {}, "other": {}},
        "targets": {
            "a": {"dsn": "postgresql://u@h1/a", "cluster": "main", "wal": {"retention": {"keep_monthly": 1}}},
            "b": {"dsn": "postgresql://u@h1/b", "cluster": "main", "wal": {"retention": {"keep_daily": 9, "keep_monthly": 0}}},
            "c": {"dsn": "postgresql://u@h2/c", "cluster": "other"},
        }})
    main = wal_retention_policy(cfg, "main")
    assert main.gfs == RetentionPolicy(keep_daily=9, keep_weekly=2, keep_monthly=1, min_age_days=20) and main.keep_last is None
    assert wal_retention_policy(cfg, "other").gfs == RetentionPolicy(5, 2, 6, 20)
    assert wal_retention_policy(cfg, "main", keep_last=3).keep_last == 3


# --- on a store ---------------------------------------------------------------------------------

def _store_base_backup(ctx, cluster: str, tl: int, n: int, started: datetime) -> str:
    bid = new_base_backup_id(cluster, started, f"{tl:02x}{n:02x}")
    data = b"base backup data " + bid.encode()
    m = manifest(bid, tl, n, started, cluster=cluster, key_id=ctx.write_key.key_id, stored_bytes=len(data))
    ctx.store.put_bytes(data_key(cluster, bid), data)
    ctx.store.put_bytes(manifest_key(cluster, bid), seal_base_manifest(m, ctx.write_key))
    return bid


def _archive(ctx, cluster: str, names: list[str]) -> None:
    for name in names:
        ctx.store.put_bytes(archive_key(cluster, name), f"wal {name}".encode() * 10)


def _names(ctx, cluster: str) -> set[str]:
    prefix = f"wal/{cluster_safe(cluster)}/archive/"
    return {o.key.rsplit("/", 1)[-1][:-len(".zst.aes")] for o in ctx.store.list(prefix)}


@pytest.fixture
def stocked(write_config):
    """A config whose cluster `main` keeps 2 daily base backups (GFS, nothing younger than 0 days);
    four base backups (days 30, 20, 10 and 1 ago) and the archive they were taken over, with a
    timeline switch at segment 0x2E, in a local store. archive.info from the real identity guard."""
    from dbops_pipelines.wal.archive.identity import ClusterIdentity, check_identity

    path = write_config({"app": {"dsn": "postgresql://postgres@127.0.0.1:5999/app", "cluster": CLUSTER,
                                 "wal": {"retention": {"keep_daily": 2, "keep_weekly": 0, "keep_monthly": 0,
                                                       "min_age_days": 0}}}},
                        clusters={CLUSTER: {}})
    ctx = FleetContext(load_config(path))
    check_identity(ctx, CLUSTER, ClusterIdentity(SYSID, SEG))
    now = datetime.now(timezone.utc).replace(microsecond=0)
    starts = [(1, 0x04, 30), (1, 0x13, 20), (1, 0x22, 10), (2, 0x31, 1)]
    ids = [_store_base_backup(ctx, CLUSTER, tl, n, now - timedelta(days=d)) for tl, n, d in starts]
    names = [seg(1, n) for n in range(1, 0x30)] + [seg(1, 0x2E) + ".partial", "00000002.history"]
    names += [seg(2, n) for n in range(0x2E, 0x38)]
    names += [f"{seg(tl, n)}.00000028.backup" for tl, n, _ in starts]
    _archive(ctx, CLUSTER, names)
    return {"path": path, "ctx": ctx, "ids": ids, "names": set(names)}


def test_retention_keeps_exactly_the_wal_its_base_backups_need(stocked, capsys):
    ctx, ids, path = stocked["ctx"], stocked["ids"], str(stocked["path"])
    before = {o.key: o.size for o in ctx.store.list("wal/")}
    # Kept: the base backups of 10 days and 1 day ago; the oldest kept starts in segment 0x22 of TL1.
    cutoff = seg(1, 0x22)
    expected_gone = {n for n in stocked["names"] if n != "00000002.history" and n[8:24] < cutoff[8:24]}
    expected_kept = stocked["names"] - expected_gone

    # The dry run: the plan, and nothing deleted.
    assert cli_wal.main(["--config", path, "wal", "retention", "app", "--dry-run", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dry_run"] and out["cutoff_segment"] == cutoff and out["cutoff_backup_id"] == ids[2]
    assert [b["backup_id"] for b in out["base_backups"] if not b["keep"]] == [ids[1], ids[0]]
    assert set(out["wal_delete"]["names"]) == expected_gone and out["wal_delete"]["first"] == seg(1, 1)
    assert out["wal_delete"]["last"] == seg(1, 0x21) and out["deleted_wal_count"] == 0 and out["ok"]
    assert {o.key: o.size for o in ctx.store.list("wal/")} == before

    assert cli_wal.main(["--config", path, "wal", "retention", "--cluster", CLUSTER, "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert f"DELETE {ids[0]}" in text and f"KEEP   {ids[3]}" in text and "dry run: nothing deleted" in text
    assert f"{seg(1, 1)} .. {seg(1, 0x21)}" in text and "history files are always kept" in text
    assert {o.key: o.size for o in ctx.store.list("wal/")} == before

    # The real run.
    assert cli_wal.main(["--config", path, "wal", "retention", "app"]) == 0
    assert f"deleted 2 base backup(s) and {len(expected_gone)} WAL object(s)" in capsys.readouterr().out
    assert [e.backup_id for e in list_base_backups(ctx, CLUSTER)] == [ids[3], ids[2]]
    assert all(e.valid for e in list_base_backups(ctx, CLUSTER))
    left = _names(ctx, CLUSTER)
    assert left == expected_kept
    # Every segment from the oldest kept base backup's start to the newest is there, on the
    # timeline it follows (TL1 up to the switch, TL2 after), and nothing before it on any timeline.
    assert {seg(1, n) for n in range(0x22, 0x2E)} | {seg(2, n) for n in range(0x2E, 0x38)} <= left
    assert not any(n[8:24] < cutoff[8:24] for n in left if not n.endswith(".history"))
    assert "00000002.history" in left and ctx.store.exists(f"wal/{CLUSTER}/archive.info")

    # Again: nothing more to do.
    outcome = apply_wal_retention(ctx, CLUSTER)
    assert outcome.ok and not outcome.deleted_backups and not outcome.deleted_wal


def test_a_failed_delete_stops_without_leaving_a_valid_backup_without_data(stocked, monkeypatch):
    ctx, ids = stocked["ctx"], stocked["ids"]
    deleted: list[str] = []
    real_delete = ctx.store.delete

    def delete(key: str) -> None:
        if key.endswith("/base.tar.zst.aes") and ids[1] in key:
            raise StorageError("the store said no", "retry")
        real_delete(key)
        deleted.append(key)

    monkeypatch.setattr(ctx.store, "delete", delete)
    outcome = apply_wal_retention(ctx, CLUSTER)
    assert not outcome.ok and "the store said no" in outcome.failed and "no WAL was deleted" in outcome.failed
    # Newest-first deletion of the two: ids[1] (manifest gone, its data refused) before ids[0].
    assert deleted == [manifest_key(CLUSTER, ids[1])] and outcome.deleted_backups == [] and not outcome.deleted_wal
    states = {e.backup_id: e.state for e in list_base_backups(ctx, CLUSTER)}
    assert states[ids[1]] in (WRITING, INCOMPLETE) and states[ids[0]] == VALID   # never "valid" with its data gone
    assert _names(ctx, CLUSTER) == stocked["names"]

    # A WAL delete failing midway: what went is the oldest ones, with no hole behind them.
    monkeypatch.setattr(ctx.store, "delete", real_delete)
    calls = {"n": 0}

    def flaky(key: str) -> None:
        calls["n"] += 1
        if "/archive/" in key and calls["n"] > 8:
            raise StorageError("connection reset", "retry")
        real_delete(key)

    monkeypatch.setattr(ctx.store, "delete", flaky)
    outcome = apply_wal_retention(ctx, CLUSTER)
    assert outcome.failed and "connection reset" in outcome.failed and outcome.deleted_backups
    plan_order = [o.name for o in outcome.plan.wal_delete]
    assert outcome.deleted_wal == plan_order[:len(outcome.deleted_wal)] and set(plan_order[len(outcome.deleted_wal):]) <= _names(ctx, CLUSTER)
    monkeypatch.setattr(ctx.store, "delete", real_delete)
    assert apply_wal_retention(ctx, CLUSTER).ok        # the next run picks up where it stopped
    assert not apply_wal_retention(ctx, CLUSTER, dry_run=True).plan.wal_delete


def test_a_damaged_manifest_blocks_the_cluster(stocked, capsys):
    ctx, ids, path = stocked["ctx"], stocked["ids"], str(stocked["path"])
    key = manifest_key(CLUSTER, ids[2])
    sealed = bytearray(ctx.store.get_bytes(key))
    sealed[-5] ^= 1
    ctx.store.delete(key)
    ctx.store.put_bytes(key, bytes(sealed))
    before = {o.key for o in ctx.store.list("wal/")}
    assert cli_wal.main(["--config", path, "wal", "retention", "app"]) == cli_wal.EXIT_PROBLEMS
    captured = capsys.readouterr()
    assert "RETENTION STOPPED" in captured.out and "stopped, nothing deleted" in captured.err
    assert {o.key for o in ctx.store.list("wal/")} == before
