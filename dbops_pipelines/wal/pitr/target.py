"""What to recover to: the recovery target as given on the command line or the launchpad, checked
before anything happens, and what a recovery reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from dbops_pipelines.errors import ConfigError, DbopsError
from dbops_pipelines.wal.naming import format_lsn, parse_lsn

ACTIONS = ("promote", "pause")


class PitrFailed(DbopsError):
    """The point-in-time restore did not reach its target."""


@dataclass(frozen=True)
class RecoveryTarget:
    kind: str                 # time | xid | lsn | name | latest
    value: str | None = None
    action: str = "promote"

    def describe(self) -> str:
        return "the end of the archive" if self.kind == "latest" else f"{self.kind} {self.value}"

    def settings(self) -> dict[str, str]:
        out = {"recovery_target_timeline": "latest"}
        if self.kind != "latest":
            out[f"recovery_target_{self.kind}"] = self.value or ""
            out["recovery_target_action"] = self.action
            out["recovery_target_inclusive"] = "on"
        return out


def parse_target(to: str | None = None, xid: str | None = None, lsn: str | None = None, name: str | None = None,
                 latest: bool = False, action: str = "promote") -> RecoveryTarget:
    given = [(k, v) for k, v in (("time", to), ("xid", xid), ("lsn", lsn), ("name", name)) if v is not None]
    if len(given) + bool(latest) != 1:
        raise ConfigError("name exactly one recovery target", "use one of --to TIMESTAMP, --to-xid, --to-lsn, --to-name, --latest")
    if action not in ACTIONS:
        raise ConfigError(f"unknown --action {action!r}", "use promote or pause")
    if latest:
        return RecoveryTarget("latest", None, "promote")
    kind, value = given[0]
    if kind == "time":
        try:
            when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"{value!r} is not an ISO 8601 time", "e.g. --to 2026-11-24T14:05:00Z") from None
        value = (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).isoformat()
    elif kind == "lsn":
        try:
            value = format_lsn(parse_lsn(value))
        except ValueError as exc:
            raise ConfigError(str(exc), "an LSN looks like 0/3000028 (pg_current_wal_lsn())") from None
    elif kind == "xid" and not value.isdigit():
        raise ConfigError(f"{value!r} is not a transaction id", "a number, e.g. --to-xid 7451")
    elif kind == "name" and (not value or len(value) > 63):
        raise ConfigError("a restore point name has 1 to 63 characters", "the name given to pg_create_restore_point()")
    return RecoveryTarget(kind, value, action)


@dataclass
class PitrResult:
    cluster: str
    target: str                       # the recovery target, described
    base_backup: str
    data_dir: str
    port: int
    reached_lsn: str | None
    last_transaction_at: str | None
    timeline: int | None
    state: str                        # promoted | paused
    rto_seconds: float
    restore_seconds: float
    stop_command: str

    def to_dict(self) -> dict:
        return asdict(self)
