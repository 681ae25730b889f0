"""The verification report: the evidence kept for every verification, pass or fail.

Reports live under ``_verifications/<target>/<backup_id>/<verified_at>-<nonce>.json`` in the
store, outside the backup namespace, so retention deleting a backup never deletes the evidence
that it was verified. Each is sealed (MAC under the backup key, bound to its backup) and written
create-only with a nonce, so two verifications of one backup never overwrite each other and a
report written by anyone without the key never counts.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import asdict, dataclass, field

from dbops_pipelines.backup.crypto import BackupKey, open_record, seal_record
from dbops_pipelines.errors import EncryptionKeyError, IntegrityError
from dbops_pipelines.storage.base import BackupStore
from dbops_pipelines.storage.namespaces import VERIFICATIONS as REPORTS_PREFIX

FORMAT = "dbops-verification-report"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Finding:
    kind: str          # integrity | restore | missing_table | extra_table | row_count | checksum | schema | sanity | rto
                       # | erasure_reapply
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
    # Where the restore ran (scratch.py): "staging", "same_server" (the target's own server, warned
    # about) or "same_server_on_purpose"; None in reports written before it was recorded.
    server_role: str | None = None
    # The same-server warning, when there is one. Not a finding: findings are evidence about the
    # backup, and this is about where it was checked; it never changes `passed` or `outcome`.
    server_notice: str | None = None
    # The GDPR erasure ledger re-applied to the restored copy after the comparison (gdpr/reapply.py):
    # what a real restore would also do. None when the target keeps no ledger.
    erasures_reapplied: dict | None = None

    nonce: str = field(default_factory=lambda: secrets.token_hex(4))

    @property
    def passed(self) -> bool:
        """THE definition of "verified", used by the listing, retention, the Dagster check and the
        staleness alert: the backup came back complete and correct. Warnings (an RTO over its
        objective) are reported and alerted on their own, but do not un-verify a correct backup."""
        return not any(f.severity == "error" for f in self.findings)

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity != "error"]

    @property
    def outcome(self) -> str:
        if not self.passed:
            return "failed"
        return "passed_with_warnings" if self.findings else "passed"

    def summary(self) -> str:
        note = f"; note: restored on the production server {self.server}, no staging server" if self.server_notice else ""
        if not self.findings:
            return f"backup {self.backup_id} verified: {len(self.tables)} tables match, restored in {self.rto_seconds:.1f} s{note}"
        errors = [f for f in self.findings if f.severity == "error"] or self.findings
        shown = "; ".join(f.message for f in errors[:5]) + (f"; and {len(errors) - 5} more" if len(errors) > 5 else "")
        verdict = "FAILED verification" if not self.passed else "verified with warnings"
        return f"backup {self.backup_id} {verdict}: {shown}{note}"

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed, "outcome": self.outcome}

    @classmethod
    def from_dict(cls, raw: dict) -> "VerificationReport":
        # Fields this version does not know are ignored; fields older reports lack (server_role,
        # server_notice...) take their defaults: every report ever sealed stays readable.
        known = set(cls.__dataclass_fields__)
        raw = {k: v for k, v in raw.items() if k in known}
        raw["tables"] = [TableResult(**t) for t in raw.get("tables", [])]
        raw["findings"] = [Finding(**f) for f in raw.get("findings", [])]
        return cls(**raw)


def report_key(report: VerificationReport) -> str:
    stamp = report.verified_at.replace(":", "").replace("-", "").split(".")[0].split("+")[0]
    return f"{REPORTS_PREFIX}{report.target}/{report.backup_id}/{stamp}Z-{report.nonce}.json"


def save_report(store: BackupStore, report: VerificationReport, key: BackupKey) -> str:
    """Create-only: a report is evidence and is never replaced."""
    path = report_key(report)
    body = json.dumps(report.to_dict(), indent=2, sort_keys=True).encode()
    store.put_bytes(path, seal_record(key, FORMAT, FORMAT_VERSION, f"{report.target}/{report.backup_id}", body))
    return path


_NAME = re.compile(r"\d{8}T\d{6}Z(-[0-9a-f]{8})?\.json")


def summary(report: VerificationReport) -> dict:
    """What the listing and retention carry of a backup's newest verification."""
    return {"passed": report.passed, "outcome": report.outcome, "verified_at": report.verified_at,
            "run_id": report.run_id, "rto_seconds": report.rto_seconds, "summary": report.summary()}


def _report_paths(store: BackupStore, target: str | None) -> dict[tuple[str, str], list[str]]:
    by_backup: dict[tuple[str, str], list[str]] = {}
    for obj in store.list(REPORTS_PREFIX + (f"{target}/" if target else "")):
        parts = obj.key[len(REPORTS_PREFIX):].split("/")
        if len(parts) == 3 and _NAME.fullmatch(parts[2]):
            by_backup.setdefault((parts[0], parts[1]), []).append(obj.key)
    return by_backup


def _open_report(store: BackupStore, keys: list[BackupKey], tgt: str, bid: str, path: str) -> VerificationReport | None:
    """The report at ``path`` if it authenticates for its place; None if it does not (unsigned,
    altered, copied, unknown key, malformed). A store that cannot be read is not "untrusted":
    its StorageError propagates, so no one concludes anything from a report they could not read."""
    data = store.get_bytes(path)
    try:
        opened = open_record(data, keys, FORMAT, f"{tgt}/{bid}", f"verification report {path}")
        report = VerificationReport.from_dict(json.loads(opened.body))
    except (IntegrityError, EncryptionKeyError, ValueError, TypeError, KeyError):
        return None
    return report if (report.target, report.backup_id) == (tgt, bid) else None


def latest_reports(store: BackupStore, keys: list[BackupKey], target: str | None = None) -> dict[str, VerificationReport]:
    """The newest *authenticated* report of every verified backup, by backup id. Reports that do
    not authenticate for their place are skipped; a store error propagates."""
    out: dict[str, VerificationReport] = {}
    for (tgt, bid), paths in _report_paths(store, target).items():
        for path in sorted(paths, reverse=True):  # newest first; fall back past untrusted ones
            report = _open_report(store, keys, tgt, bid, path)
            if report is not None:
                out[bid] = report
                break
    return out


def newest_passing_report(store: BackupStore, keys: list[BackupKey], target: str) -> VerificationReport | None:
    """The newest report that passed and is its backup's newest authenticated report (a backup
    verified, then failed on re-verification, is not verified). Reads newest first and stops at
    the first such report, so the alert sensor does not read every report ever written each tick."""
    paths = sorted(((path.rsplit("/", 1)[1], tgt, bid, path) for (tgt, bid), ps in _report_paths(store, target).items()
                    for path in ps), reverse=True)
    decided: set[str] = set()
    for _name, tgt, bid, path in paths:
        if bid in decided:
            continue
        report = _open_report(store, keys, tgt, bid, path)
        if report is None:
            continue
        if report.passed:
            return report
        decided.add(bid)
    return None
