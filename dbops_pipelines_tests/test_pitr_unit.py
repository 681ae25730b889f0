"""The choices PITR makes before restoring anything: which base backup, and whether the archive
reaches the target without a gap (pure logic, no I/O)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from dbops_pipelines.errors import ConfigError
from dbops_pipelines.wal.pitr import (ArchivedSegment, PitrFailed, check_archive_reaches, choose_base_backup,
                                      parse_target)
from dbops_pipelines.wal.naming import Segment, format_lsn

T0 = datetime(2026, 11, 20, tzinfo=timezone.utc)
MB16 = 16 << 20


class Base:
    def __init__(self, backup_id, segment, hours, timeline=1):
        self.backup_id, self.timeline = backup_id, timeline
        self.start_lsn = format_lsn(segment * MB16 + 40)
        self.stop_lsn = format_lsn(segment * MB16 + 4000)
        self.stop_time = (T0 + timedelta(hours=hours)).isoformat()


def archive(numbers, timeline=1, start_hours=0):
    return [ArchivedSegment(Segment(timeline, n), T0 + timedelta(hours=start_hours + i)) for i, n in enumerate(numbers)]


def test_the_newest_base_backup_consistent_before_the_target_is_chosen():
    old, new = Base("old", 2, 1), Base("new", 10, 30)
    assert choose_base_backup([old, new], parse_target(to=(T0 + timedelta(hours=5)).isoformat())).backup_id == "old"
    assert choose_base_backup([old, new], parse_target(to=(T0 + timedelta(hours=31)).isoformat())).backup_id == "new"
    assert choose_base_backup([old, new], parse_target(latest=True)).backup_id == "new"
    assert choose_base_backup([old, new], parse_target(lsn=format_lsn(5 * MB16))).backup_id == "old"
    with pytest.raises(PitrFailed, match="before the end of the oldest base backup"):
        choose_base_backup([old, new], parse_target(to=T0.isoformat()))
    with pytest.raises(PitrFailed, match="no valid base backup"):
        choose_base_backup([], parse_target(latest=True))


def test_a_gap_after_the_base_backup_is_refused_and_one_before_it_does_not_matter():
    base = Base("b", 4, 1)
    segments = archive([1, 2, 4, 5, 6, 7])                 # 3 is missing, but before the backup
    assert check_archive_reaches(base, segments, parse_target(latest=True)) == Segment(1, 7)
    with pytest.raises(PitrFailed, match=f"segment {Segment(1, 6).name()} is missing"):
        check_archive_reaches(base, archive([4, 5, 7, 8]), parse_target(latest=True))


def test_targets_past_the_archive_are_refused_and_later_timelines_count():
    base = Base("b", 4, 1)
    segments = archive([4, 5, 6]) + archive([6, 7, 8], timeline=2, start_hours=10)   # promoted at 6
    check_archive_reaches(base, segments, parse_target(to=(T0 + timedelta(hours=11)).isoformat()))
    check_archive_reaches(base, segments, parse_target(lsn=format_lsn(8 * MB16 + 10)))
    with pytest.raises(PitrFailed, match="after the newest archived WAL"):
        check_archive_reaches(base, segments, parse_target(to=(T0 + timedelta(hours=20)).isoformat()))
    with pytest.raises(PitrFailed, match="after the end of the WAL archive"):
        check_archive_reaches(base, segments, parse_target(lsn=format_lsn(9 * MB16)))


@pytest.mark.parametrize("kwargs, problem", [
    ({}, "exactly one recovery target"),
    ({"to": "yesterday"}, "not an ISO 8601 time"),
    ({"lsn": "12345"}, "not an LSN"),
    ({"xid": "12a"}, "not a transaction id"),
    ({"name": "x" * 64}, "1 to 63 characters"),
    ({"latest": True, "to": "2026-01-01"}, "exactly one"),
    ({"latest": True, "action": "shutdown"}, "unknown --action"),
])
def test_bad_targets_are_config_errors(kwargs, problem):
    with pytest.raises(ConfigError, match=problem):
        parse_target(**kwargs)


def test_a_time_without_zone_is_utc():
    assert parse_target(to="2026-11-24T14:05:00").value == "2026-11-24T14:05:00+00:00"


def test_a_named_base_backup_is_used_and_an_unknown_one_refused():
    old, new = Base("old", 2, 1), Base("new", 10, 30)
    assert choose_base_backup([old, new], parse_target(name="before_migration"), "old").backup_id == "old"
    with pytest.raises(PitrFailed, match="not a valid base backup"):
        choose_base_backup([old, new], parse_target(latest=True), "nope")


def test_the_copy_gets_its_own_socket_and_rules_ahead_of_production_ones(tmp_path):
    from dbops_pipelines.wal.pitr import private_socket as _private_socket, recovery_settings
    (tmp_path / "pg_hba.conf").write_text("host all all 127.0.0.1/32 scram-sha-256\n")
    socket_dir = _private_socket(tmp_path)
    try:
        rules = (socket_dir / "pg_hba.conf").read_text().splitlines()
        assert [r for r in rules if not r.startswith("#")] == ["local all all trust", "host all all 127.0.0.1/32 scram-sha-256"]
        assert oct(socket_dir.stat().st_mode & 0o777) == "0o700" and len(str(socket_dir)) < 80
        settings = recovery_settings("c", tmp_path / "dbops.yaml", 5440, parse_target(latest=True), socket_dir)
        assert settings["unix_socket_directories"] == str(socket_dir)
        assert settings["hba_file"] == str(socket_dir / "pg_hba.conf") and settings["listen_addresses"] == "127.0.0.1"
    finally:
        import shutil
        shutil.rmtree(socket_dir)
