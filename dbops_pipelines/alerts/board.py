"""The alert board: the open alerts as the alert sensor last saw them, kept in the store so that
anyone can read them (`dbops alerts`) without a sink, a Dagster UI or the sensor's cursor.

The sensor calls ``publish_open_alerts`` at the end of every tick; it overwrites one small JSON
object, ``_alerts/open.json``. The object is also the sensor's heartbeat: a board whose
``published_at`` is older than ``STALE_AFTER_INTERVALS`` sensor intervals (or no board at all)
means the sensor is not running, and then the board cannot be trusted to be complete.

No Dagster here: the Dagster layer passes the state it keeps in its cursor.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from dbops_pipelines.alerts.dispatch import AlertState
from dbops_pipelines.alerts.model import SEVERITIES, severity_rank
from dbops_pipelines.errors import StorageError
from dbops_pipelines.redact import redact
from dbops_pipelines.storage.base import BackupStore
from dbops_pipelines.storage.namespaces import ALERTS

BOARD_KEY = ALERTS + "open.json"
FORMAT_VERSION = 1
STALE_AFTER_INTERVALS = 3   # the board is stale when older than this many sensor intervals
_REWRITTEN = ("the dbops_alerts sensor rewrites it on every tick: check that the sensor is running "
              "(Dagster UI -> Automation -> dbops_alerts)")


@dataclass(frozen=True)
class BoardAlert:
    key: str
    target: str
    condition: str
    severity: str
    title: str
    message: str
    opened_at: str          # ISO 8601 UTC: when the alert was first seen firing
    run_url: str | None = None

    def age(self, now: datetime) -> timedelta:
        return now - datetime.fromisoformat(self.opened_at)

    def to_dict(self) -> dict:
        return asdict(self)


def _order(a: BoardAlert) -> tuple:
    """Most severe first, then the oldest."""
    return (-severity_rank(a.severity), datetime.fromisoformat(a.opened_at), a.key)


@dataclass(frozen=True)
class AlertBoard:
    published_at: datetime
    sensor_interval_seconds: int
    alerts: tuple[BoardAlert, ...]   # most severe first, then the oldest

    def age(self, now: datetime) -> timedelta:
        """How long ago the sensor published this board."""
        return now - self.published_at

    def stale_after(self) -> timedelta:
        return timedelta(seconds=STALE_AFTER_INTERVALS * self.sensor_interval_seconds)

    def is_stale(self, now: datetime) -> bool:
        """True when the sensor has not published for longer than it should have: it is stopped,
        its daemon is down, or its ticks fail. The board may then miss alerts."""
        return self.age(now) > self.stale_after()

    def to_dict(self) -> dict:
        return {"format": FORMAT_VERSION, "published_at": self.published_at.isoformat(),
                "sensor_interval_seconds": self.sensor_interval_seconds,
                "alerts": [a.to_dict() for a in self.alerts]}


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (datetime.now(timezone.utc))")
    return now


def publish_open_alerts(store: BackupStore, state: AlertState, now: datetime,
                        sensor_interval_seconds: int) -> AlertBoard:
    """Write the open alerts of ``state`` to the store as the board (``_alerts/open.json``,
    overwritten), stamped with ``now`` and the sensor's interval; returns what was written.
    Raises StorageError when the store fails: the caller decides whether the tick goes on."""
    alerts = tuple(sorted((BoardAlert(key=key, target=o.alert.target, condition=o.alert.condition,
                                      severity=o.alert.severity, title=redact(o.alert.title),
                                      message=redact(o.alert.message), opened_at=o.opened_at,
                                      run_url=redact(o.alert.run_url) if o.alert.run_url else None)
                           for key, o in state.open.items()), key=_order))
    board = AlertBoard(_aware(now), int(sensor_interval_seconds), alerts)
    store.put_bytes(BOARD_KEY, json.dumps(board.to_dict(), indent=2, sort_keys=True).encode(), overwrite=True)
    return board


def read_open_alerts(store: BackupStore) -> AlertBoard | None:
    """The board as last published, or None when there is none (the sensor never published to
    this store). Raises StorageError when it exists but cannot be read or understood."""
    if store.stat(BOARD_KEY) is None:
        return None
    where = store.location(BOARD_KEY)
    data = store.get_bytes(BOARD_KEY)
    try:
        raw = json.loads(data)
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        version = raw.get("format")
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise StorageError(f"{where} was written by a newer dbops (board format {version})",
                               "upgrade dbops where you run this command")
        if version != FORMAT_VERSION:
            raise ValueError(f"unknown format {version!r}")
        alerts = []
        for item in raw["alerts"]:
            alert = BoardAlert(**{f: item.get(f) for f in BoardAlert.__dataclass_fields__})
            if alert.severity not in SEVERITIES or not all(
                    isinstance(getattr(alert, f), str) for f in ("key", "target", "condition", "title",
                                                                  "message", "opened_at")):
                raise ValueError(f"alert {str(alert.key)[:80]!r} is malformed")
            if datetime.fromisoformat(alert.opened_at).tzinfo is None:
                raise ValueError(f"alert {alert.key[:80]!r} has no time zone in opened_at")
            alerts.append(alert)
        published = datetime.fromisoformat(raw["published_at"])
        interval = raw["sensor_interval_seconds"]
        if published.tzinfo is None or not isinstance(interval, int) or isinstance(interval, bool) or interval < 1:
            raise ValueError("bad published_at or sensor_interval_seconds")
        ordered = tuple(sorted(alerts, key=_order))
    except StorageError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:   # json.JSONDecodeError is a ValueError
        reason = redact(" ".join(str(exc).split()))[:200] or type(exc).__name__
        raise StorageError(f"the alert board {where} cannot be read ({type(exc).__name__}: {reason})",
                           _REWRITTEN) from None
    return AlertBoard(published, interval, ordered)
