"""What a check of a database found: the model shared by stats snapshots and the security audit.

A finding names one problem with one object (a table, an index, a session, a setting), says how
bad it is and what to do, with the SQL to run where there is one. Its ``code`` is stable: it
keys alerts (one open alert per target, code and object), runbook entries (docs/findings.md) and
thresholds in dbops.yaml.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

Severity = Literal["info", "warning", "critical"]
SEVERITIES: tuple[Severity, ...] = ("info", "warning", "critical")   # ascending


@dataclass(frozen=True)
class Finding:
    code: str                 # stable, snake_case: "fk_without_index"
    severity: Severity
    target: str
    object: str               # what it is about, quoted as SQL would: public."Orders".customer_id; "" = the database
    message: str              # what was seen, with the numbers
    recommendation: str       # what to do, in plain words
    sql: str | None = None    # the statement that fixes it, when there is one
    section: str = ""         # the part of the check that found it (a stats section, an audit area)

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}")

    @property
    def key(self) -> tuple[str, str, str]:
        return self.target, self.code, self.object

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Finding":
        return cls(**{k: d.get(k) for k in ("code", "severity", "target", "object", "message", "recommendation", "sql")},
                   section=d.get("section") or "")


def worst(findings: list[Finding]) -> Severity | None:
    """The highest severity among ``findings``; None when there are none."""
    return max((f.severity for f in findings), key=SEVERITIES.index, default=None)


def by_severity(findings: list[Finding]) -> list[Finding]:
    """Worst first, then by code and object: a stable order for reports and summaries."""
    return sorted(findings, key=lambda f: (-SEVERITIES.index(f.severity), f.code, f.object))
