"""The alert model shared by conditions, the dispatcher and the sinks."""

from __future__ import annotations

from dataclasses import asdict, dataclass

SEVERITIES = ("info", "warning", "critical")


def severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity)


@dataclass(frozen=True)
class Alert:
    """One condition of one target. ``key`` identifies the condition for de-duplication:
    the same key firing again is the same open alert, not a new one."""

    key: str                 # e.g. "app/run_failed/backup_app", "app/backup_stale"
    target: str
    condition: str           # run_failed | check_failed | backup_stale | verification_stale | ...
    severity: str            # info | warning | critical
    title: str               # one line: what failed
    message: str             # what happened and what to do (already redacted)
    occurred_at: str         # ISO 8601 UTC
    run_id: str | None = None
    run_url: str | None = None
    error_excerpt: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "Alert":
        return cls(**{k: raw.get(k) for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Notification:
    """What a sink is asked to deliver."""

    kind: str                # firing | reminder | resolved
    alert: Alert

    @property
    def subject(self) -> str:
        prefix = {"firing": f"[{self.alert.severity.upper()}]", "reminder": f"[{self.alert.severity.upper()}, still failing]",
                  "resolved": "[RESOLVED]"}[self.kind]
        return f"{prefix} dbops {self.alert.target}: {self.alert.title}"

    def text(self) -> str:
        a = self.alert
        lines = [self.subject, "", a.message if self.kind != "resolved" else f"Cleared: {a.title}", "",
                 f"target: {a.target}", f"condition: {a.condition}", f"when: {a.occurred_at}"]
        if a.run_id:
            lines.append(f"run: {a.run_id}")
        if a.run_url:
            lines.append(f"link: {a.run_url}")
        if a.error_excerpt and self.kind != "resolved":
            lines += ["", "error:", a.error_excerpt]
        return "\n".join(lines)


@dataclass(frozen=True)
class DeliveryResult:
    sink: str                # a name for people: "slack", "webhook http://host/...", "email to a@b"
    notification_kind: str
    alert_key: str
    ok: bool
    attempts: int
    error: str | None = None
