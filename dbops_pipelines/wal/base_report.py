"""The evidence of a base backup's verification (verify_base.py), pass or fail.

Kept beside the logical verification reports but in a folder of its own, so neither reader
mistakes one for the other (a logical report's key has three parts below the prefix, this one
four):

    _verifications/<cluster>/base/<base_backup_id>/<verified_at>-<nonce>.json

``<cluster>`` is the cluster's folder name under wal/ (naming.cluster_prefix). Outside wal/, so
WAL retention deleting a base backup never deletes the evidence that it was verified. Sealed
with the backup key, bound to its place, written create-only with a nonce: a report written by
anyone without the key never counts, and two verifications of one backup never overwrite
each other. The findings use the logical verification's Finding (one finding shape for both).
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import asdict, dataclass, field

from dbops_pipelines.backup.crypto import BackupKey, open_record, seal_record
from dbops_pipelines.errors import EncryptionKeyError, IntegrityError
from dbops_pipelines.storage.base import BackupStore
from dbops_pipelines.storage.namespaces import VERIFICATIONS
from dbops_pipelines.verification.report import Finding
from dbops_pipelines.wal.basebackup.manifest import cluster_safe

FORMAT = "dbops-base-verification-report"
FORMAT_VERSION = 1

# Finding kinds of a base verification:
#   integrity   the stored object does not authenticate/decompress, or pg_verifybackup finds damage
#   restore     the restore could not write the files (not the backup's fault, but nothing was checked)
#   recovery    the restored copy did not start or did not reach consistency
#   amcheck     pg_amcheck found corruption in a table or index
#   row_count   a table of the copy cannot be read (its rows cannot be counted)
#   drill       the PITR drill failed: the copy did not reach the marker, or has what came after it
#   not_checked a check that could not run (no pg_amcheck, no amcheck extension...): a warning


@dataclass
class BaseVerificationReport:
    backup_id: str
    cluster: str
    target: str                          # the target verified through (its database holds the drill's markers)
    verified_at: str                     # ISO UTC, when the verification started
    run_id: str | None
    server_version: str
    start_lsn: str
    stop_lsn: str                        # consistent from here: what the copy recovers to
    stop_time: str
    restore_seconds: float | None = None           # stored object -> files
    recovery_seconds: float | None = None          # server start -> consistent and open
    rto_seconds: float | None = None               # restore + recovery: the time to a usable copy
    verifybackup: dict | None = None               # pg_verifybackup: ok, exit_code, messages, seconds
    consistent_at: dict | None = None              # the copy once open: lsn, timeline, last transaction
    amcheck: dict | None = None                    # pg_amcheck: ok, exit_code, databases, messages, seconds
    row_counts: dict[str, dict[str, int]] = field(default_factory=dict)   # database -> table -> rows
    live_comparison: str = ""                      # what was (not) compared with the live database, and why
    drill: dict | None = None                      # the PITR drill: status passed | failed | skipped, and its evidence
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the reader should know that is not a finding
    nonce: str = field(default_factory=lambda: secrets.token_hex(4))

    @property
    def passed(self) -> bool:
        """No error finding: the base backup came back, consistent and undamaged, and (when the
        drill ran) point-in-time recovery to the drill's marker worked."""
        return not any(f.severity == "error" for f in self.findings)

    @property
    def outcome(self) -> str:
        if not self.passed:
            return "failed"
        return "passed_with_warnings" if self.findings else "passed"

    def summary(self) -> str:
        drill = (self.drill or {}).get("status", "skipped")
        if self.passed:
            tables = sum(len(t) for t in self.row_counts.values())
            text = (f"base backup {self.backup_id} verified: pg_verifybackup ok, consistent at "
                    f"{(self.consistent_at or {}).get('lsn', self.stop_lsn)}, "
                    f"pg_amcheck {'ok' if (self.amcheck or {}).get('ok') else 'not run'}, {tables} tables counted in "
                    f"{len(self.row_counts)} databases; usable copy in {self.rto_seconds or 0:.1f} s; PITR drill {drill}")
            warnings = [f.message for f in self.findings]
            return text + (f"; warnings: {'; '.join(warnings[:3])}" if warnings else "")
        errors = [f for f in self.findings if f.severity == "error"]
        shown = "; ".join(f.message for f in errors[:5]) + (f"; and {len(errors) - 5} more" if len(errors) > 5 else "")
        return f"base backup {self.backup_id} FAILED verification: {shown}"

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed, "outcome": self.outcome}

    @classmethod
    def from_dict(cls, raw: dict) -> "BaseVerificationReport":
        known = set(cls.__dataclass_fields__)
        raw = {k: v for k, v in raw.items() if k in known}
        raw["findings"] = [Finding(**f) for f in raw.get("findings", [])]
        return cls(**raw)


def base_reports_prefix(cluster: str) -> str:
    return f"{VERIFICATIONS}{cluster_safe(cluster)}/base/"


def base_report_key(report: BaseVerificationReport) -> str:
    stamp = report.verified_at.replace(":", "").replace("-", "").split(".")[0].split("+")[0]
    return f"{base_reports_prefix(report.cluster)}{report.backup_id}/{stamp}Z-{report.nonce}.json"


def _binding(cluster: str, backup_id: str) -> str:
    return f"base/{cluster_safe(cluster)}/{backup_id}"


def save_base_report(store: BackupStore, report: BaseVerificationReport, key: BackupKey) -> str:
    """Create-only: a report is evidence and is never replaced."""
    path = base_report_key(report)
    body = json.dumps(report.to_dict(), indent=2, sort_keys=True).encode()
    store.put_bytes(path, seal_record(key, FORMAT, FORMAT_VERSION, _binding(report.cluster, report.backup_id), body))
    return path


_NAME = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{8}\.json")


def latest_base_reports(store: BackupStore, keys: list[BackupKey], cluster: str) -> dict[str, BaseVerificationReport]:
    """The newest *authenticated* report of every verified base backup of ``cluster``, by id.
    Reports that do not authenticate for their place are skipped; a store error propagates."""
    prefix = base_reports_prefix(cluster)
    by_backup: dict[str, list[str]] = {}
    for obj in store.list(prefix):
        parts = obj.key[len(prefix):].split("/")
        if len(parts) == 2 and _NAME.fullmatch(parts[1]):
            by_backup.setdefault(parts[0], []).append(obj.key)
    out: dict[str, BaseVerificationReport] = {}
    for bid, paths in by_backup.items():
        for path in sorted(paths, reverse=True):
            try:
                opened = open_record(store.get_bytes(path), keys, FORMAT, _binding(cluster, bid), f"base verification report {path}")
                report = BaseVerificationReport.from_dict(json.loads(opened.body))
            except (IntegrityError, EncryptionKeyError, ValueError, TypeError, KeyError):
                continue
            if report.backup_id == bid and cluster_safe(report.cluster) == cluster_safe(cluster):
                out[bid] = report
                break
    return out
