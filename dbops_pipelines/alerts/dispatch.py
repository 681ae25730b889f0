"""De-duplication, reminders and resolution: which notifications to send this tick. Pure.

One open alert per key (target + condition). A condition seen firing opens an alert and
notifies once; while it keeps firing, a reminder goes out every ``reminder`` interval instead
of a message per tick; when it is seen cleared, a "resolved" notification closes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from dbops_pipelines.alerts.model import Alert, DeliveryResult, Notification

MAX_FAILURES_KEPT = 20
MAX_PENDING = 200
PENDING_FOR = timedelta(days=1)   # then the next reminder (or nothing, for a resolve) takes over


@dataclass(frozen=True)
class Observation:
    """A condition seen this tick: firing (with the alert to send) or cleared."""

    key: str
    firing: bool
    alert: Alert | None = None
    # A sweep (firing False): every open alert whose key starts with ``key`` and that is not seen
    # firing this tick is resolved. For conditions judged as a set (a snapshot's findings): an
    # object that is no longer found clears, without the condition having to know what was open.
    sweep: bool = False


@dataclass
class OpenAlert:
    alert: Alert
    opened_at: str
    last_sent_at: str
    sends: int = 1


@dataclass
class AlertState:
    open: dict[str, OpenAlert] = field(default_factory=dict)
    failed_deliveries: list[dict] = field(default_factory=list)   # newest last, for operators
    marks: dict[str, str | int | float | dict] = field(default_factory=dict)  # where event scans resume
    # Notifications a sink missed, retried on the next ticks (a "resolved" must not be lost, or a
    # PagerDuty incident stays open forever; a "firing" must not wait for the next reminder).
    pending: list[dict] = field(default_factory=list)
    _retry_since: dict = field(default_factory=dict, repr=False, compare=False)   # this tick's retries

    def to_json(self) -> str:
        return json.dumps({
            "open": {k: {"alert": o.alert.to_dict(), "opened_at": o.opened_at, "last_sent_at": o.last_sent_at,
                         "sends": o.sends} for k, o in self.open.items()},
            "failed_deliveries": self.failed_deliveries,
            "marks": self.marks,
            "pending": self.pending,
        }, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> "AlertState":
        if not text:
            return cls()
        raw = json.loads(text)
        return cls(
            open={k: OpenAlert(Alert.from_dict(o["alert"]), o["opened_at"], o["last_sent_at"], o["sends"])
                  for k, o in raw.get("open", {}).items()},
            failed_deliveries=raw.get("failed_deliveries", []),
            marks=raw.get("marks", {}),
            pending=raw.get("pending", []),
        )

    def take_pending(self) -> list[tuple[Notification, str]]:
        """The notifications to retry this tick, each with the one sink that missed it."""
        # A "firing" or "reminder" of an alert that has been resolved since is not sent any more:
        # it would reopen an incident that nothing will resolve again.
        keep = [p for p in self.pending if p["kind"] == "resolved" or p["alert"]["key"] in self.open]
        out = [(Notification(p["kind"], Alert.from_dict(p["alert"])), p["sink"]) for p in keep]
        self._retry_since = {(p["sink"], p["kind"], p["alert"]["key"]): p["since"] for p in keep}
        self.pending = []
        return out

    def record_failures(self, results: list[DeliveryResult], now: datetime,
                        sent: list[Notification] = ()) -> None:
        """Keep failed deliveries for operators and, for those whose notification is known, to
        retry next tick, for at most ``PENDING_FOR``; a sink that is misconfigured (attempts 0
        without a timeout) is not retried: nothing would change until the config does."""
        by_id = {(n.kind, n.alert.key): n for n in sent}
        for r in results:
            if r.ok:
                continue
            self.failed_deliveries.append({"at": now.isoformat(), "sink": r.sink, "alert": r.alert_key,
                                           "kind": r.notification_kind, "attempts": r.attempts, "error": r.error})
            n = by_id.get((r.notification_kind, r.alert_key))
            if n is None or (r.attempts == 0 and "retried next tick" not in (r.error or "")):
                continue
            first = self._retry_since.get((r.sink, r.notification_kind, r.alert_key), now.isoformat())
            if now - datetime.fromisoformat(first) <= PENDING_FOR:
                self.pending.append({"sink": r.sink, "kind": n.kind, "alert": n.alert.to_dict(), "since": first})
        del self.failed_deliveries[:-MAX_FAILURES_KEPT]
        del self.pending[:-MAX_PENDING]


def plan_notifications(observations: list[Observation], state: AlertState, now: datetime,
                       reminder: timedelta) -> list[Notification]:
    """Update ``state`` in place for this tick's observations (in order) and return what to send."""
    out: list[Notification] = []
    stamp = now.isoformat()
    firing_now = {obs.key for obs in observations if obs.firing}
    sweeps = [obs.key for obs in observations if obs.sweep]
    observations = [obs for obs in observations if not obs.sweep] + [
        Observation(key, False) for key in sorted(state.open)
        if key not in firing_now and any(key.startswith(prefix) for prefix in sweeps)]
    for obs in observations:
        current = state.open.get(obs.key)
        if obs.firing:
            if obs.alert is None:
                raise ValueError(f"firing observation {obs.key} needs an alert")
            if current is None:
                state.open[obs.key] = OpenAlert(obs.alert, stamp, stamp)
                out.append(Notification("firing", obs.alert))
            else:
                current.alert = obs.alert  # keep the newest details (run id, error)
                if now - datetime.fromisoformat(current.last_sent_at) >= reminder:
                    current.last_sent_at, current.sends = stamp, current.sends + 1
                    out.append(Notification("reminder", obs.alert))
        elif current is not None:
            del state.open[obs.key]
            out.append(Notification("resolved", current.alert))
    # Event-based conditions (a failed run, a failed check) are seen once and stay open until
    # their success is seen: remind about them too, not only about conditions seen this tick.
    observed = {obs.key for obs in observations}
    for key, current in state.open.items():
        if key not in observed and now - datetime.fromisoformat(current.last_sent_at) >= reminder:
            current.last_sent_at, current.sends = stamp, current.sends + 1
            out.append(Notification("reminder", current.alert))
    return out
