"""Pure logic of verification: manifest comparison, sanity expectations, RTO, report outcome."""

from __future__ import annotations

import pytest

from dbops_pipelines.backup.manifest import BackupManifest
from dbops_pipelines.verification.compare import compare_fingerprints, compare_tables, rto_finding
from dbops_pipelines.verification.report import Finding, VerificationReport
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
