"""Pure logic of the stats feature, no I/O: thresholds layering, the finding model, rates across
resets, the alert sweep that resolves findings that are gone, and stats command-line parsing."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from dbops_pipelines.alerts.dispatch import AlertState, Observation, plan_notifications
from dbops_pipelines.alerts.model import Alert
from dbops_pipelines.cli_stats import UsageError, parse_age, parse_time
from dbops_pipelines.config import parse_config
from dbops_pipelines.errors import ConfigError
from dbops_pipelines.findings import Finding, by_severity, worst
from dbops_pipelines.stats.rates import counter_rate, reset_between

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
DSN = "postgresql://dbops@db1/app"


def test_stats_settings_layer_key_by_key_thresholds_too():
    cfg = parse_config({
        "metrics": {"dsn": "postgresql://m@metrics/m"},
        "defaults": {"stats": {"schedule": "*/10 * * * *", "thresholds": {"lock_wait_seconds": 3, "dead_tuples_count": 5}}},
        "targets": {"app": {"dsn": DSN, "stats": {"top_n": 7, "thresholds": {"dead_tuples_count": 9}}},
                    "other": {"dsn": DSN}},
    })
    app, other = cfg.stats_for("app"), cfg.stats_for("other")
    assert (app.top_n, app.schedule, app.timezone) == (7, "*/10 * * * *", "UTC")
    assert (app.thresholds.lock_wait_seconds, app.thresholds.dead_tuples_count) == (3, 9)
    assert app.thresholds.slow_statement_warning_ms == 500          # built-in default kept
    assert (other.top_n, other.thresholds.dead_tuples_count) == (50, 5)
    assert cfg.metrics.retention_days == 30 and cfg.metrics.schema_name == "dbops_metrics"


@pytest.mark.parametrize("stats, problem", [
    ({"thresholds": {"lock_wait_secs": 3}}, "lock_wait_secs"),                    # a typo is an error, not ignored
    ({"thresholds": {"connections_high_ratio": 1.5}}, "connections_high_ratio"),
    ({"top_n": 0}, "top_n"),
    ({"thresholds": {"dead_tuples_count": "10"}}, "dead_tuples_count"),
])
def test_bad_stats_settings_name_the_key(stats, problem):
    with pytest.raises(ConfigError) as err:
        parse_config({"targets": {"app": {"dsn": DSN, "stats": stats}}})
    assert problem in err.value.message


def test_metrics_dsn_with_a_password_is_refused():
    with pytest.raises(ConfigError) as err:
        parse_config({"metrics": {"dsn": "postgresql://m:hunter2@metrics/m"}, "targets": {}})
    assert "password" in err.value.message and "hunter2" not in err.value.message


def test_finding_model_round_trips_and_orders_worst_first():
    a = Finding("unused_index", "info", "app", 'public."I x"', "m", "r", "DROP INDEX CONCURRENTLY public.\"I x\"")
    b = Finding("lock_wait", "critical", "app", "pid 7", "m", "r", section="activity")
    assert Finding.from_dict(b.to_dict()) == b and Finding.from_dict(a.to_dict()) == a
    assert by_severity([a, b]) == [b, a] and worst([a, b]) == "critical" and worst([]) is None
    with pytest.raises(ValueError):
        Finding("x", "urgent", "app", "", "m", "r")


def test_rates_are_unknown_across_resets_never_negative_or_inflated():
    assert counter_rate(100, 400, 300) == 1.0
    assert counter_rate(400, 100, 300) is None                 # went backwards: a reset nobody announced
    assert counter_rate(100, 400, 300, reset_between=True) is None
    assert counter_rate(None, 400, 300) is None and counter_rate(1, 2, 0) is None
    assert reset_between("2026-12-01T00:00", "2026-12-01T01:00") and not reset_between(None, "x")


def _alert(key: str) -> Alert:
    return Alert(key=key, target="app", condition=key.split("/")[2], severity="warning", title=key, message="m",
                 occurred_at=NOW.isoformat())


def test_a_sweep_resolves_only_what_is_no_longer_found_under_its_prefix():
    state = AlertState()
    first = [Observation(k, True, _alert(k)) for k in ("app/stats/lock_wait/pid 1", "app/stats/dead_tuples/public.t")]
    first += [Observation("app/stats/", False, sweep=True), Observation("app/stats_stale", True, _alert("app/stats_stale/x"))]
    sent = plan_notifications(first, state, NOW, timedelta(hours=1))
    assert sorted(n.kind for n in sent) == ["firing"] * 3
    # next tick: the lock wait is gone, the dead tuples remain; another target's findings are untouched
    state.open["db2/stats/wraparound/db2"] = state.open["app/stats/dead_tuples/public.t"]
    second = [Observation("app/stats/dead_tuples/public.t", True, _alert("app/stats/dead_tuples/public.t")),
              Observation("app/stats/", False, sweep=True)]
    sent = plan_notifications(second, state, NOW + timedelta(minutes=5), timedelta(hours=1))
    assert [(n.kind, n.alert.key) for n in sent] == [("resolved", "app/stats/lock_wait/pid 1")]
    assert set(state.open) == {"app/stats/dead_tuples/public.t", "app/stats_stale", "db2/stats/wraparound/db2"}


def test_ages_and_times_for_history_and_reports():
    assert parse_age("6h", "--since") == timedelta(hours=6) and parse_age("30m", "--since") == timedelta(minutes=30)
    assert parse_time("24h", "--from", NOW) == NOW - timedelta(hours=24)
    assert parse_time("2026-11-30T06:00", "--from", NOW) == datetime(2026, 11, 30, 6, tzinfo=timezone.utc)
    for bad in ("six hours", "-1h", "6 weeks"):
        with pytest.raises(UsageError):
            parse_age(bad, "--since")
    with pytest.raises(UsageError) as err:
        parse_time("yesterday", "--from", NOW)
    assert "--from" in err.value.message


def test_a_once_slow_statement_is_judged_on_the_window_and_does_not_flap():
    from dbops_pipelines.stats.sections.statements import evidence

    slow_history = {"queryid": 1, "userid": 10, "mean_exec_ms": 2000.0, "calls": 50}
    quiet = {"seconds": 300.0, "statements": {"1/10": {"calls_in_window": 0, "mean_exec_ms": None}}}
    fast = {"seconds": 300.0, "statements": {"1/10": {"calls_in_window": 1, "mean_exec_ms": 3.0}}}
    assert evidence(slow_history, quiet, 1) is None                 # did not run: nothing to say now
    assert evidence(slow_history, fast, 1)[0] == 3.0                # ran, fast: judged on that
    assert evidence(slow_history, {}, 1)[0] == 2000.0               # no previous snapshot: its history
    evicted = {"seconds": 300.0, "statements": {"1/10": {"calls_in_window": None, "mean_exec_ms": None}}}
    assert evidence(slow_history, evicted, 1)[0] == 2000.0          # counters restarted: recent history


@pytest.mark.parametrize("where, raw, problem", [
    ("stats", {"targets": {"app": {"dsn": DSN, "stats": {"schedule": "*/5 * * *"}}}}, "targets.app.stats.schedule"),
    ("stats", {"targets": {"app": {"dsn": DSN, "stats": {"schedule": "61 * * * *"}}}}, "outside 0-59"),
    ("stats", {"targets": {"app": {"dsn": DSN, "stats": {"timezone": "Mars/Olympus"}}}}, "targets.app.stats.timezone"),
    ("backup", {"targets": {"app": {"dsn": DSN, "backup": {"schedule": "every night"}}}}, "targets.app.backup.schedule"),
    ("report", {"defaults": {"stats": {"report_schedule": "0 25 * * *"}}, "targets": {}}, "defaults.stats.report_schedule"),
    ("order", {"targets": {"app": {"dsn": DSN, "stats": {"thresholds": {"slow_statement_warning_ms": 20000}}}}},
     "slow_statement warning (20000) is above its critical threshold (10000)"),
])
def test_schedules_time_zones_and_threshold_order_are_checked_when_the_file_is_read(where, raw, problem):
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert problem in err.value.message


def test_the_stale_limit_follows_the_schedule_unless_set():
    cfg = parse_config({"targets": {
        "fast": {"dsn": DSN}, "hourly": {"dsn": DSN, "stats": {"schedule": "0 * * * *"}},
        "set": {"dsn": DSN, "stats": {"schedule": "0 * * * *", "max_age_minutes": 45}},
        "daily": {"dsn": DSN, "stats": {"schedule": "@daily"}}}})
    assert cfg.stats_for("fast").max_age_minutes == 30 and cfg.stats_for("hourly").max_age_minutes == 180
    assert cfg.stats_for("set").max_age_minutes == 45 and cfg.stats_for("daily").max_age_minutes == 3 * 1440
    for good in ("*/5 * * * *", "0 2 * * 1-5", "15,45 */2 1 jan,jul mon", "@hourly"):
        assert parse_config({"targets": {"a": {"dsn": DSN, "stats": {"schedule": good}}}})
