"""The verification report: the evidence kept for every verification, pass or fail.

Reports live under ``_verifications/<target>/<backup_id>/<verified_at>.json`` in the backup
store, beside the backups but outside their prefixes, so retention deleting a backup never
deletes the evidence that it was verified.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from dbops_pipelines.storage.base import BackupStore

REPORTS_PREFIX = "_verifications/"


@dataclass(frozen=True)
class Finding:
    kind: str          # integrity | restore | missing_table | extra_table | row_count | checksum | schema | sanity | rto
    severity: str      # error (verification fails) | warning (verified, but look at it)
    object: str        # what it is about: a table, a schema object, a query name, the backup
    message: str
    expected: str | int | None = None
    actual: str | int | None = None


@dataclass(frozen=True)
class TableResult:
    table: str
    expected_rows: int | None
    actual_rows: int | None
    checksum: str       # "match" | "mismatch" | "not checked"

    @property
    def ok(self) -> bool:
        return self.expected_rows == self.actual_rows and self.checksum != "mismatch"


@dataclass
class VerificationReport:
    backup_id: str
    target: str
    verified_at: str                     # ISO UTC, when the verification started
    run_id: str | None
    scratch_database: str
    server: str
    rto_seconds: float | None            # restore wall time: the real recovery time
    rto_objective_seconds: int
    tables: list[TableResult] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    sanity: list[dict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Verified: the backup came back complete and correct (warnings allowed)."""
        return not any(f.severity == "error" for f in self.findings)

    @property
    def outcome(self) -> str:
        if not self.passed:
            return "failed"
        return "passed_with_warnings" if self.findings else "passed"

    def summary(self) -> str:
        if not self.findings:
            return f"backup {self.backup_id} verified: {len(self.tables)} tables match, restored in {self.rto_seconds:.1f} s"
        errors = [f for f in self.findings if f.severity == "error"] or self.findings
        shown = "; ".join(f.message for f in errors[:5]) + (f"; and {len(errors) - 5} more" if len(errors) > 5 else "")
        verdict = "FAILED verification" if not self.passed else "verified with warnings"
        return f"backup {self.backup_id} {verdict}: {shown}"

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed, "outcome": self.outcome}

    @classmethod
    def from_dict(cls, raw: dict) -> "VerificationReport":
        raw = {k: v for k, v in raw.items() if k not in ("passed", "outcome")}
        raw["tables"] = [TableResult(**t) for t in raw.get("tables", [])]
        raw["findings"] = [Finding(**f) for f in raw.get("findings", [])]
        return cls(**raw)


def report_key(report: VerificationReport) -> str:
    stamp = report.verified_at.replace(":", "").replace("-", "").split(".")[0].split("+")[0]
    return f"{REPORTS_PREFIX}{report.target}/{report.backup_id}/{stamp}Z.json"


def save_report(store: BackupStore, report: VerificationReport) -> str:
    key = report_key(report)
    store.put_bytes(key, json.dumps(report.to_dict(), indent=2, sort_keys=True).encode())
    return key


def latest_reports(store: BackupStore, target: str | None = None) -> dict[str, VerificationReport]:
    """The newest report of every verified backup, by backup id."""
    newest: dict[str, str] = {}
    for obj in store.list(REPORTS_PREFIX + (f"{target}/" if target else "")):
        parts = obj.key.split("/")
        if len(parts) == 4 and parts[3].endswith(".json"):
            newest[parts[2]] = max(newest.get(parts[2], ""), obj.key)
    return {bid: VerificationReport.from_dict(json.loads(store.get_bytes(key))) for bid, key in newest.items()}
