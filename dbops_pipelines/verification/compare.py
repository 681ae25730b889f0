"""Compare what was restored with what the manifest says was backed up. Pure: no I/O."""

from __future__ import annotations

from dbops_pipelines.backup.manifest import BackupManifest
from dbops_pipelines.backup.snapshot import canonical_table
from dbops_pipelines.verification.report import Finding, TableResult

FINGERPRINT_CATEGORIES = ("tables", "columns", "indexes", "constraints", "policies", "extensions")
_SINGULAR = {"tables": "table", "columns": "column", "indexes": "index", "constraints": "constraint",
             "policies": "RLS policy", "extensions": "extension"}


def compare_tables(manifest: BackupManifest, actual_rows: dict[str, int],
                   actual_checksums: dict[str, str]) -> tuple[list[TableResult], list[Finding]]:
    """``actual_*`` are keyed by snapshot.qualified(); the manifest's keys are read through
    canonical_table(), so a manifest written before names were quoted compares the same."""
    results, findings = [], []
    want_sums = {canonical_table(t): s for t, s in manifest.table_checksums.items()}
    for table, expected in sorted((canonical_table(t), n) for t, n in manifest.table_rows.items()):
        actual = actual_rows.get(table)
        want_sum = want_sums.get(table)
        got_sum = actual_checksums.get(table)
        checksum = "not checked" if want_sum is None or got_sum is None else ("match" if want_sum == got_sum else "mismatch")
        results.append(TableResult(table, expected, actual, checksum))
        if actual is None:
            findings.append(Finding("missing_table", "error", table, f"table {table} is missing from the restored copy",
                                    expected, None))
        elif actual != expected:
            findings.append(Finding("row_count", "error", table,
                                    f"table {table} has {actual} rows, the manifest says {expected}", expected, actual))
        elif checksum == "mismatch":
            findings.append(Finding("checksum", "error", table, f"table {table} content differs from the backup's checksum",
                                    want_sum, got_sum))
    return results, findings


def compare_fingerprints(expected: dict, actual: dict) -> list[Finding]:
    """Every schema object that is missing, unexpected or different, by category."""
    findings = []
    for category in FINGERPRINT_CATEGORIES:
        want, got = expected.get(category, {}), actual.get(category, {})
        what = _SINGULAR[category]
        for name in sorted(want.keys() - got.keys()):
            findings.append(Finding("schema", "error", name, f"{what} {name} is missing from the restored copy", want[name], None))
        for name in sorted(got.keys() - want.keys()):
            findings.append(Finding("schema", "error", name, f"{what} {name} is in the restored copy but not in the manifest",
                                    None, got[name]))
        for name in sorted(want.keys() & got.keys()):
            if want[name] != got[name]:
                findings.append(Finding("schema", "error", name, f"{what} {name} differs: expected {want[name]!r}, got {got[name]!r}",
                                        want[name], got[name]))
    return findings


def rto_finding(rto_seconds: float, objective_seconds: int) -> list[Finding]:
    if rto_seconds <= objective_seconds:
        return []
    return [Finding("rto", "warning", "restore", f"restore took {rto_seconds:.0f} s, over the RTO objective of {objective_seconds} s",
                    objective_seconds, round(rto_seconds))]
