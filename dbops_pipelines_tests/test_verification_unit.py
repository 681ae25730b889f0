"""Pure logic of verification: manifest comparison, sanity expectations, RTO, report outcome,
where the restore runs, scratch database names."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

import pytest

from dbops_pipelines.backup.crypto import BackupKey, seal_record
from dbops_pipelines.backup.manifest import BackupManifest
from dbops_pipelines.config import load_config
from dbops_pipelines.errors import ConfigError
from dbops_pipelines.storage.local import LocalStore
from dbops_pipelines.verification import scratch
from dbops_pipelines.verification.compare import compare_fingerprints, compare_tables, rto_finding
from dbops_pipelines.verification.report import FORMAT, FORMAT_VERSION, Finding, VerificationReport, latest_reports, report_key
from dbops_pipelines.verification.sanity import meets


def manifest(**kw) -> BackupManifest:
    base = dict(backup_id="app-1", target="app", kind="full", database="app", server="h:5432", server_version="15.1",
                pg_dump_version="15.1", started_at="2026-01-01T00:00:00+00:00", finished_at="2026-01-01T00:01:00+00:00",
                raw_bytes=1, stored_bytes=1, sha256="x", object_key="k", location="l", compression="zstd-1",
                encryption="e", key_id="kid", table_rows={"public.a": 3, "public.b": 0}, schema_fingerprint={},
                table_checksums={"public.a": "aaa"})
    return BackupManifest(**{**base, **kw})


def test_tables_all_match():
    results, findings = compare_tables(manifest(), {"public.a": 3, "public.b": 0}, {"public.a": "aaa"})
    assert findings == [] and [r.checksum for r in results] == ["match", "not checked"]


def test_tables_missing_count_and_checksum():
    _, findings = compare_tables(manifest(), {"public.a": 3}, {"public.a": "bbb"})
    assert [(f.kind, f.object) for f in findings] == [("checksum", "public.a"), ("missing_table", "public.b")]
    _, findings = compare_tables(manifest(), {"public.a": 4, "public.b": 0}, {})
    assert findings[0].message == "table public.a has 4 rows, the manifest says 3"


def test_fingerprint_differences_by_category():
    want = {"tables": {"public.a": "r rls forced"}, "policies": {"public.a.p": "PERMISSIVE public ALL using(x) check()"},
            "indexes": {"public.a_pkey": "CREATE UNIQUE INDEX ..."}}
    got = {"tables": {"public.a": "r"}, "policies": {}, "indexes": {"public.a_pkey": "CREATE UNIQUE INDEX ...", "public.x": "..."}}
    messages = [f.message for f in compare_fingerprints(want, got)]
    assert messages == [
        "table public.a differs: expected 'r rls forced', got 'r'",
        "index public.x is in the restored copy but not in the manifest",
        "RLS policy public.a.p is missing from the restored copy",
    ]
    assert compare_fingerprints(want, want) == []


@pytest.mark.parametrize("value, expect, ok", [
    (True, True, True), (False, True, False), (None, True, False), (5, ">= 1", True), (0, ">= 1", False),
    (2.5, "< 3", True), (3, "== 3", True), (3, "!= 3", False), ("abc", "abc", True), (7, 7, True),
    (None, "> 0", False), ("x", "> 0", False), (1, True, True), (0, False, True),
])
def test_sanity_expectations(value, expect, ok):
    assert meets(value, expect) is ok


def test_rto_is_a_warning_not_a_failure():
    assert rto_finding(10, 60) == []
    [f] = rto_finding(90.4, 60)
    assert f.severity == "warning" and "over the RTO objective of 60 s" in f.message
    report = VerificationReport("b", "app", "2026-01-01T00:00:00+00:00", None, "s", "h", 90.4, 60, findings=[f])
    assert report.passed and report.outcome == "passed_with_warnings"
    report.findings.append(Finding("row_count", "error", "t", "bad"))
    assert not report.passed and report.outcome == "failed" and "FAILED" in report.summary()
    assert VerificationReport.from_dict(report.to_dict()) == report


# --- where the restore runs ------------------------------------------------------------------------

PROD = "postgresql://dbops@db1.internal:5432/app"


@pytest.mark.parametrize("server_dsn, on_purpose, role", [
    (None, False, "same_server"),
    (None, True, "same_server_on_purpose"),
    ("postgresql://dbops@staging.internal:5432/postgres", False, "staging"),
    ("postgresql://dbops@staging.internal:5432/postgres", True, "staging"),
    ("postgresql://dbops@db1.internal:6543/postgres", False, "staging"),       # another cluster on the host
    ("host=db1.internal port=5432 dbname=postgres user=other", False, "same_server"),  # the target's own server
    ("postgresql://dbops@db1.internal/postgres", True, "same_server_on_purpose"),     # default port 5432
])
def test_server_role(server_dsn, on_purpose, role):
    assert scratch.server_role(PROD, server_dsn, on_purpose) == role


def test_same_server_notice_says_what_and_what_to_do():
    notice = scratch.same_server_notice("app", "db1.internal:5432", None)
    assert notice.startswith("restoring into a scratch database on the production server of app (db1.internal:5432): "
                             "a whole restore's load lands on it")
    assert "configure verification.server_dsn (a staging server)" in notice
    assert "set verification.same_server_on_purpose: true" in notice
    pointed = scratch.same_server_notice("app", "db1.internal:5432", "postgresql://dbops@db1.internal/postgres")
    assert pointed.startswith("verification.server_dsn of app points at its own production server (db1.internal:5432)")
    assert "postgresql://" not in pointed  # names the server, never echoes a DSN


def test_same_server_notice_is_not_a_finding():
    """`passed` and `outcome` are about the backup: a good backup checked on production still passes."""
    report = VerificationReport("b", "app", "2026-01-01T00:00:00+00:00", None, "s", "db1:5432", 1.5, 60,
                                server_role="same_server", server_notice=scratch.same_server_notice("app", "db1:5432", None))
    assert report.passed and report.outcome == "passed" and report.warnings == []
    assert report.summary() == ("backup b verified: 0 tables match, restored in 1.5 s; "
                                "note: restored on the production server db1:5432, no staging server")
    on_purpose = VerificationReport("b", "app", "2026-01-01T00:00:00+00:00", None, "s", "db1:5432", 1.5, 60,
                                    server_role="same_server_on_purpose")
    assert on_purpose.summary() == "backup b verified: 0 tables match, restored in 1.5 s"
    assert on_purpose.to_dict()["server_role"] == "same_server_on_purpose" and on_purpose.to_dict()["server_notice"] is None
    assert VerificationReport.from_dict(report.to_dict()) == report


# Every key a sealed report held before server_role and server_notice were added.
OLD_REPORT = {"backup_id": "app-20260101T020000Z-1a2b", "target": "app", "verified_at": "2026-01-04T04:00:00.123+00:00",
              "run_id": "r1", "scratch_database": "dbops_verify_app_20260104040000", "server": "db1:5432",
              "rto_seconds": 3.2, "rto_objective_seconds": 14400, "tables": [
                  {"table": "public.a", "expected_rows": 3, "actual_rows": 3, "checksum": "match"}],
              "findings": [], "sanity": [], "nonce": "0a1b2c3d", "passed": True, "outcome": "passed"}


def test_a_report_sealed_before_server_role_still_opens(tmp_path):
    assert VerificationReport.from_dict(dict(OLD_REPORT)).server_role is None
    key = BackupKey(os.urandom(32), "TEST_KEY")
    store = LocalStore(tmp_path)
    old = VerificationReport.from_dict(dict(OLD_REPORT))
    body = json.dumps(OLD_REPORT, indent=2, sort_keys=True).encode()  # the bytes as the old version wrote them
    store.put_bytes(report_key(old), seal_record(key, FORMAT, FORMAT_VERSION, "app/app-20260101T020000Z-1a2b", body))
    [(bid, opened)] = latest_reports(store, [key], "app").items()
    assert bid == "app-20260101T020000Z-1a2b" and opened.passed and opened.rto_seconds == 3.2
    assert (opened.server_role, opened.server_notice) == (None, None)
    assert [t.table for t in opened.tables] == ["public.a"]


def write_yaml(tmp_path, verification_defaults: dict, target_verification: dict | None):
    import yaml
    target = {"dsn": PROD, **({"verification": target_verification} if target_verification is not None else {})}
    path = tmp_path / "dbops.yaml"
    path.write_text(yaml.safe_dump({"defaults": {"verification": verification_defaults}, "targets": {"app": target}}))
    return load_config(path)


def test_same_server_on_purpose_setting_defaults_and_layers(tmp_path):
    assert write_yaml(tmp_path, {}, None).verification_for("app").same_server_on_purpose is False
    assert write_yaml(tmp_path, {"same_server_on_purpose": True}, None).verification_for("app").same_server_on_purpose is True
    assert write_yaml(tmp_path, {"same_server_on_purpose": True}, {"jobs": 2}).verification_for("app").same_server_on_purpose is True
    layered = write_yaml(tmp_path, {"same_server_on_purpose": True}, {"same_server_on_purpose": False}).verification_for("app")
    assert layered.same_server_on_purpose is False and layered.jobs == 1
    with pytest.raises(ConfigError, match="same_server_on_purpose"):
        write_yaml(tmp_path, {}, {"same_server_on_purpose": "yes"})


# --- scratch database names ---------------------------------------------------------------------------

NOW = datetime(2026, 3, 1, 4, 0, 7, tzinfo=timezone.utc)


def test_scratch_names_of_one_second_differ_and_parse_back():
    names = {scratch.scratch_name("app", NOW) for _ in range(50)}
    assert len(names) == 50
    for name in names:
        assert name.startswith("dbops_verify_app_20260301040007_") and len(name) == len("dbops_verify_app_20260301040007_") + 6
        assert scratch._created_at(name, "app") == NOW
    assert scratch.scratch_name("app", NOW, "0a1b2c") == "dbops_verify_app_20260301040007_0a1b2c"
    with pytest.raises(ValueError, match="6 lower-case hex"):
        scratch.scratch_name("app", NOW, "zzzzzz")


def test_scratch_names_fit_postgres_and_keep_long_targets_apart():
    longest = "a" * 63  # the longest target name the config accepts
    name = scratch.scratch_name(longest, NOW)
    assert len(name.encode()) <= 63
    assert scratch._created_at(name, longest) == NOW
    twin = "a" * 62 + "b"  # shares every character the name has room for
    assert scratch._created_at(name, twin) is None
    assert scratch.scratch_name(twin, NOW, "000000") != scratch.scratch_name(longest, NOW, "000000")
    fits = "t" * 28  # exactly the room left: kept whole
    assert scratch.scratch_name(fits, NOW, "000000") == f"dbops_verify_{fits}_20260301040007_000000"
    assert len(scratch.scratch_name(fits, NOW).encode()) == 63


@pytest.mark.parametrize("name, target, created", [
    ("dbops_verify_app_20200101000000", "app", datetime(2020, 1, 1, tzinfo=timezone.utc)),         # earlier format
    ("dbops_verify_app_20200101000000_00ff00", "app", datetime(2020, 1, 1, tzinfo=timezone.utc)),  # current format
    ("dbops_verify_app_x_20200101000000", "app", None),          # another target's, earlier format
    ("dbops_verify_app_x_20200101000000_00ff00", "app", None),   # another target's, current format
    ("dbops_verify_app_x_20200101000000_00ff00", "app_x", datetime(2020, 1, 1, tzinfo=timezone.utc)),
    ("dbops_verify_app_20201399000000_00ff00", "app", None),     # not a date
    ("dbops_verify_app_20200101000000_00FF00", "app", None),     # not what scratch_name writes
    ("dbops_verify_app_20200101000000_00ff00_x", "app", None),
    ("dbops_verify_app", "app", None),
])
def test_created_at_recognises_both_formats_of_this_target_only(name, target, created):
    assert scratch._created_at(name, target) == created


def test_a_long_targets_earlier_name_is_still_recognised():
    target = "b" * 35  # the earlier format fitted 63 bytes up to 35 characters
    old = f"dbops_verify_{target}_20200101000000"
    then = datetime(2020, 1, 1, tzinfo=timezone.utc)
    assert len(old) == 63 and scratch._created_at(old, target) == then
    assert scratch._created_at(old, "b" * 34) is None
    new = scratch.scratch_name(target, then)  # now shortened and hashed: both formats age alike
    assert new != old and len(new) <= 63 and scratch._created_at(new, target) == then


def test_a_report_that_cannot_be_read_is_never_skipped_for_an_older_one(tmp_path):
    """The newest report failed, an older one passed. If the store cannot read the newest, the
    answer is "cannot tell" (a StorageError), never the older "passed" (nor "not verified")."""
    from dbops_pipelines.errors import StorageError
    from dbops_pipelines.verification.report import newest_passing_report, save_report

    key = BackupKey(os.urandom(32), "TEST_KEY")
    store = LocalStore(tmp_path)
    bid = "app-20260101T020000Z-1a2b"
    passed = VerificationReport(bid, "app", "2026-01-04T04:00:00+00:00", None, "s", "db1:5432", 1.5, 60)
    failed = VerificationReport(bid, "app", "2026-01-11T04:00:00+00:00", None, "s", "db1:5432", 1.5, 60,
                                findings=[Finding("row_count", "error", "public.a", "table public.a has 2 rows, expected 3")])
    save_report(store, passed, key)
    newest = save_report(store, failed, key)
    assert latest_reports(store, [key], "app")[bid].passed is False
    assert newest_passing_report(store, [key], "app") is None     # its newest report failed: not verified

    class FlakyStore(LocalStore):
        """A real local store whose read of one object fails, as S3 does on a 503."""

        def get(self, key, chunk_size=1 << 20):
            if key == newest:
                raise StorageError(f"cannot read {key}: 503 Slow Down", "retry later")
            return super().get(key, chunk_size)

    flaky = FlakyStore(tmp_path)
    with pytest.raises(StorageError):
        latest_reports(flaky, [key], "app")
    with pytest.raises(StorageError):
        newest_passing_report(flaky, [key], "app")
