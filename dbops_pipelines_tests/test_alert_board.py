"""The alert board (`_alerts/open.json`) and `dbops alerts`, against a real LocalStore in a
temporary folder: what the alert sensor publishes, and what an operator without a sink sees."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
import yaml

from dbops_pipelines.alerts.board import BOARD_KEY, publish_open_alerts, read_open_alerts
from dbops_pipelines.alerts.dispatch import AlertState, Observation, plan_notifications
from dbops_pipelines.alerts.model import Alert
from dbops_pipelines.cli import main
from dbops_pipelines.errors import StorageError
from dbops_pipelines.storage.local import LocalStore

LEAKY_DSN = "postgresql://u:hunter2@db.internal/app"
NOW = datetime.now(timezone.utc)


def alert(key: str, severity: str, title: str, run_url: str | None = None, **kw) -> Alert:
    target, condition = key.split("/")[:2]
    fields = dict(key=key, target=target, condition=condition, severity=severity, title=title,
                  message=f"{title}: see the runbook", occurred_at=NOW.isoformat(), run_url=run_url)
    fields.update(kw)
    return Alert(**fields)


def state_with(*opened: tuple[Alert, timedelta], now: datetime = NOW) -> AlertState:
    """Open alerts as the sensor's dispatcher leaves them: each fired ``ago`` before ``now``."""
    state = AlertState()
    for a, ago in opened:
        plan_notifications([Observation(a.key, True, a)], state, now - ago, timedelta(hours=4))
    return state


STALE_BACKUP = alert("app/backup_stale", "critical", "no valid backup of app")
OLD_WARNING = alert("billing/verification_stale", "warning", "no passing verification of billing")
NEW_FAILURE = alert("billing/run_failed/backup_billing", "critical", "backup_billing failed",
                    run_url="http://127.0.0.1:3000/runs/abc123")
NEWER_WARNING = alert("app/verification_stale", "warning", "no passing verification of app")


def busy_state(now: datetime = NOW) -> AlertState:
    return state_with((STALE_BACKUP, timedelta(hours=3, minutes=12)), (OLD_WARNING, timedelta(days=3)),
                      (NEW_FAILURE, timedelta(minutes=5)), (NEWER_WARNING, timedelta(hours=1)), now=now)


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "store")


# --- the core --------------------------------------------------------------------------------

def test_publish_then_read_gives_the_open_alerts_most_severe_then_oldest_first(store):
    written = publish_open_alerts(store, busy_state(), NOW, 30)
    assert [o.key for o in store.list()] == [BOARD_KEY] == ["_alerts/open.json"]
    board = read_open_alerts(store)
    assert board == written
    assert board.published_at == NOW and board.sensor_interval_seconds == 30
    assert [a.key for a in board.alerts] == [STALE_BACKUP.key, NEW_FAILURE.key, OLD_WARNING.key, NEWER_WARNING.key]
    first = board.alerts[0]
    assert (first.target, first.condition, first.severity, first.title, first.message) == (
        "app", "backup_stale", "critical", "no valid backup of app", "no valid backup of app: see the runbook")
    assert first.opened_at == (NOW - timedelta(hours=3, minutes=12)).isoformat()
    assert first.age(NOW) == timedelta(hours=3, minutes=12)
    assert board.alerts[1].run_url == "http://127.0.0.1:3000/runs/abc123"
    raw = json.loads(store.get_bytes(BOARD_KEY))
    assert raw["published_at"] == NOW.isoformat()
    assert set(raw["alerts"][0]) == {"key", "target", "condition", "severity", "title", "message", "opened_at",
                                     "run_url"}


def test_each_publish_replaces_the_board(store):
    publish_open_alerts(store, busy_state(), NOW - timedelta(minutes=1), 30)
    state = busy_state()
    del state.open[STALE_BACKUP.key]
    publish_open_alerts(store, state, NOW, 30)
    board = read_open_alerts(store)
    assert board.published_at == NOW and STALE_BACKUP.key not in [a.key for a in board.alerts]
    publish_open_alerts(store, AlertState(), NOW + timedelta(seconds=30), 30)
    assert read_open_alerts(store).alerts == ()
    assert [o.key for o in store.list()] == [BOARD_KEY]


def test_no_board_is_none_and_a_board_is_stale_after_three_intervals(store):
    assert read_open_alerts(store) is None
    board = publish_open_alerts(store, AlertState(), NOW, 30)
    assert not board.is_stale(NOW + timedelta(seconds=90))
    assert board.is_stale(NOW + timedelta(seconds=91))


def test_the_board_carries_no_password(store):
    leaky = alert("app/run_failed/backup_app", "critical", f"backup of {LEAKY_DSN} failed",
                  message=f"could not connect to {LEAKY_DSN}", run_url="http://u:hunter2@dagster/runs/1")
    publish_open_alerts(store, state_with((leaky, timedelta(minutes=1))), NOW, 30)
    text = store.get_bytes(BOARD_KEY).decode()
    assert "hunter2" not in text and "postgresql://u:***@db.internal/app" in text


def test_a_naive_time_is_refused_before_anything_is_written(store):
    with pytest.raises(ValueError, match="timezone-aware"):
        publish_open_alerts(store, busy_state(), datetime.now(), 30)
    assert store.list() == []


@pytest.mark.parametrize("content, needle", [
    (b"{not json", r"cannot be read \(JSONDecodeError"),
    (b"[]", "not a JSON object"),
    (json.dumps({"format": 1, "published_at": NOW.isoformat(), "sensor_interval_seconds": 30,
                 "alerts": [{"key": "k", "severity": "loud"}]}).encode(), "malformed"),
    (json.dumps({"format": 1, "published_at": "yesterday", "sensor_interval_seconds": 30, "alerts": []}).encode(),
     "cannot be read"),
    (json.dumps({"format": 1, "sensor_interval_seconds": 30, "alerts": []}).encode(), "KeyError"),
    (json.dumps({"format": 9, "published_at": NOW.isoformat(), "sensor_interval_seconds": 30, "alerts": []}).encode(),
     "newer dbops"),
])
def test_an_unreadable_board_is_a_storage_error_that_says_what_to_do(store, content, needle):
    store.put_bytes(BOARD_KEY, content)
    with pytest.raises(StorageError, match=needle) as err:
        read_open_alerts(store)
    assert "_alerts/open.json" in err.value.message
    assert err.value.hint


# --- dbops alerts ------------------------------------------------------------------------------

@pytest.fixture
def config(tmp_path, store, monkeypatch):
    path = tmp_path / "dbops.yaml"
    path.write_text(yaml.safe_dump({"storage": {"url": f"file://{store.root}"},
                                    "alerts": {"sensor_interval_seconds": 30}}))
    monkeypatch.setenv("DBOPS_CONFIG", str(path))
    monkeypatch.delenv("DBOPS_BACKUP_KEY", raising=False)   # listing alerts needs no key
    return path


def dbops_alerts(capsys, *flags: str) -> tuple[int, str, str]:
    code = main(["alerts", *flags])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_cli_lists_open_alerts_with_their_age_most_severe_and_oldest_first(config, store, capsys):
    now = datetime.now(timezone.utc)    # the CLI counts ages from the real clock
    publish_open_alerts(store, busy_state(now), now - timedelta(seconds=5), 30)
    code, out, err = dbops_alerts(capsys)
    assert code == 1 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["SEVERITY", "AGE", "TARGET", "TITLE"]
    rows = [line.split(None, 4) for line in lines[1:] if line.split()[0] in ("CRITICAL", "WARNING")]
    assert [(r[0], f"{r[1]} {r[2]}", r[3], r[4]) for r in rows] == [
        ("CRITICAL", "3.2 h", "app", "no valid backup of app"),
        ("CRITICAL", "5 min", "billing", "backup_billing failed"),
        ("WARNING", "3.0 d", "billing", "no passing verification of billing"),
        ("WARNING", "1.0 h", "app", "no passing verification of app")]
    assert lines[3].strip() == "http://127.0.0.1:3000/runs/abc123"    # under the alert it belongs to
    assert lines[-1].startswith("(published by the alert sensor 5 s ago, at ")


def test_cli_with_nothing_open_exits_0(config, store, capsys):
    publish_open_alerts(store, AlertState(), datetime.now(timezone.utc), 30)
    code, out, err = dbops_alerts(capsys)
    assert code == 0 and err == ""
    assert out.splitlines()[0] == "no open alerts" and "published by the alert sensor" in out
    code, out, _ = dbops_alerts(capsys, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["alerts"] == [] and doc["sensor_running"] is True and doc["problem"] is None


def test_cli_without_a_board_says_the_sensor_is_not_running(config, capsys):
    code, out, err = dbops_alerts(capsys)
    assert code == 1 and out == ""
    assert err.startswith("error: no alert board at file://") and "does not appear to be running" in err
    assert "what to do: turn on dbops_alerts in the Dagster UI (Automation)" in err
    code, out, _ = dbops_alerts(capsys, "--json")
    doc = json.loads(out)
    assert code == 1 and doc["sensor_running"] is False and doc["published_at"] is None and doc["alerts"] == []
    assert "does not appear to be running" in doc["problem"] and "Automation" in doc["what_to_do"]


def test_cli_with_a_stale_board_lists_it_and_warns(config, store, capsys):
    now = datetime.now(timezone.utc)
    publish_open_alerts(store, state_with((STALE_BACKUP, timedelta(hours=2)), now=now), now - timedelta(minutes=10), 30)
    code, out, err = dbops_alerts(capsys)
    assert code == 1
    assert "no valid backup of app" in out and "(published by the alert sensor 10 min ago" in out
    assert err.startswith("warning: the alert board was last published 10 min ago, more than 3x the sensor "
                          "interval (30 s): the alert sensor does not appear to be running")
    code, out, _ = dbops_alerts(capsys, "--json")
    doc = json.loads(out)
    assert code == 1 and doc["sensor_running"] is False and doc["sensor_interval_seconds"] == 30
    assert [a["key"] for a in doc["alerts"]] == [STALE_BACKUP.key]
    assert 7190 <= doc["alerts"][0]["age_seconds"] <= 7300 and 595 <= doc["published_seconds_ago"] <= 700


def test_cli_json_lists_every_field(config, store, capsys):
    publish_open_alerts(store, busy_state(), datetime.now(timezone.utc), 30)
    code, out, _ = dbops_alerts(capsys, "--json")
    doc = json.loads(out)
    assert code == 1 and doc["sensor_running"] is True
    assert [a["key"] for a in doc["alerts"]] == [STALE_BACKUP.key, NEW_FAILURE.key, OLD_WARNING.key, NEWER_WARNING.key]
    assert set(doc["alerts"][0]) == {"key", "target", "condition", "severity", "title", "message", "opened_at",
                                     "run_url", "age_seconds"}


def test_cli_with_an_unreadable_board_gives_one_clear_line(config, store, capsys):
    store.put_bytes(BOARD_KEY, b"{half a board")
    code, out, err = dbops_alerts(capsys)
    assert code == 1 and out == ""
    [error] = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "the alert board" in error and "cannot be read" in error and "what to do:" in err
    code, out, _ = dbops_alerts(capsys, "--json")
    doc = json.loads(out)
    assert code == 1 and "cannot be read" in doc["problem"] and doc["sensor_running"] is None


def test_board_and_cli_command_need_no_dagster():
    # the sensor calls the core; the core (and `dbops alerts`) must not pull Dagster in
    code = ("import sys, dbops_pipelines.alerts.board, dbops_pipelines.cli; "
            "sys.exit('dagster' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
