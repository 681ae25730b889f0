"""Alert conditions and de-duplication: pure logic, no I/O."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from dbops_pipelines.alerts.conditions import (CheckEvaluation, FinishedRun, Staleness, check_observations,
                                               run_observations, staleness_observations)
from dbops_pipelines.errors import StorageError
from dbops_pipelines.alerts.dispatch import AlertState, Observation, plan_notifications
from dbops_pipelines.alerts.model import Alert

T0 = datetime(2026, 11, 24, 2, 0, tzinfo=timezone.utc)
REMIND = timedelta(hours=4)


def alert(key="app/run_failed/backup_app", run_id="r1") -> Alert:
    return Alert(key, "app", "run_failed", "critical", "run failed", "msg", T0.isoformat(), run_id)


def kinds(notifications) -> list[tuple[str, str]]:
    return [(n.kind, n.alert.key) for n in notifications]


def test_one_open_alert_per_key_with_reminders_and_resolve():
    state = AlertState()
    fire = Observation("app/run_failed/backup_app", True, alert())
    assert kinds(plan_notifications([fire], state, T0, REMIND)) == [("firing", fire.key)]
    for minutes in (1, 30, 239):  # every tick while firing: silence until the reminder is due
        assert plan_notifications([fire], state, T0 + timedelta(minutes=minutes), REMIND) == []
    assert kinds(plan_notifications([fire], state, T0 + REMIND, REMIND)) == [("reminder", fire.key)]
    assert plan_notifications([fire], state, T0 + REMIND + timedelta(minutes=5), REMIND) == []
    again = AlertState.from_json(state.to_json())  # survives the cursor round trip
    resolved = plan_notifications([Observation(fire.key, False)], again, T0 + 2 * REMIND, REMIND)
    assert kinds(resolved) == [("resolved", fire.key)] and again.open == {}
    assert plan_notifications([Observation(fire.key, False)], again, T0 + 3 * REMIND, REMIND) == []


def test_failure_then_success_in_one_tick_alerts_and_resolves():
    # The success came from the asset page, the failure from the schedule's job: one feature, one alert.
    runs = [FinishedRun("r2", "backup of app (from the asset page)", "app", "backup", True, T0 + timedelta(minutes=5)),
            FinishedRun("r1", "backup_app", "app", "backup", False, T0, "could not connect: postgresql://u:pw@h/app")]
    obs = run_observations(runs, "http://ui:3000/")
    assert [o.firing for o in obs] == [True, False]  # ordered by end time
    assert obs[0].alert.run_url == "http://ui:3000/runs/r1" and obs[0].key == obs[1].key == "app/run_failed/backup"
    assert "pw@" not in obs[0].alert.error_excerpt and "***" in obs[0].alert.error_excerpt
    state = AlertState()
    assert [n.kind for n in plan_notifications(obs, state, T0 + timedelta(minutes=6), REMIND)] == ["firing", "resolved"]


def test_keys_are_per_target_and_condition():
    state = AlertState()
    a = Observation("app/run_failed/backup_app", True, alert())
    b = Observation("billing/run_failed/backup_billing", True, alert("billing/run_failed/backup_billing"))
    assert len(plan_notifications([a, b], state, T0, REMIND)) == 2
    assert len(state.open) == 2


def test_check_severity_and_resolution():
    evs = [CheckEvaluation("app", "restore_verification", False, "WARN", "r1", T0, "restore took 900 s"),
           CheckEvaluation("app", "stored_backup_integrity", False, "ERROR", "r2", T0, "failed authentication")]
    obs = check_observations(evs, "http://ui")
    assert [(o.alert.severity, o.key) for o in obs] == [("warning", "app/check_failed/restore_verification"),
                                                         ("critical", "app/check_failed/stored_backup_integrity")]
    ok = check_observations([CheckEvaluation("app", "restore_verification", True, "ERROR", "r3", T0)], "http://ui")
    assert ok == [Observation("app/check_failed/restore_verification", False)]


BACKUP_RULE = Staleness("app", "backup_stale", "valid full backup", "critical", timedelta(hours=24))
VERIFY_RULE = Staleness("app", "verification_stale", "passing restore verification", "warning", timedelta(days=8))


def test_staleness_fires_on_silence_and_clears():
    now = T0 + timedelta(days=2)
    assert all(not o.firing for o in staleness_observations(BACKUP_RULE, lambda: now - timedelta(hours=3), now))
    obs = {o.key: o for o in staleness_observations(BACKUP_RULE, lambda: now - timedelta(hours=30), now)}
    assert obs["app/backup_stale"].alert.severity == "critical"
    assert "30.0 h ago; the limit is 24 h" in obs["app/backup_stale"].alert.message
    obs = {o.key: o for o in staleness_observations(VERIFY_RULE, lambda: None, now)}
    assert obs["app/verification_stale"].alert.severity == "warning"
    assert "from never" in obs["app/verification_stale"].alert.message


def test_an_unreadable_store_is_its_own_alert_and_judges_nothing():
    """A store that cannot be read neither resolves an open staleness alert nor fires one on a
    guess: it fires store_unreadable, and only that, until it can be read again."""
    now = T0 + timedelta(days=2)

    def broken():
        raise StorageError("S3 said 503", "retry later")

    obs = staleness_observations(BACKUP_RULE, broken, now)
    assert [(o.key, o.firing) for o in obs] == [("app/store_unreadable/backup_stale", True)]
    assert obs[0].alert.condition == "store_unreadable" and "S3 said 503" in obs[0].alert.message
    state = AlertState()
    plan_notifications(staleness_observations(BACKUP_RULE, lambda: None, now), state, now, REMIND)
    plan_notifications(obs, state, now, REMIND)
    assert set(state.open) == {"app/backup_stale", "app/store_unreadable/backup_stale"}
    sent = plan_notifications(staleness_observations(BACKUP_RULE, lambda: now, now), state, now, REMIND)
    assert sorted(kinds(sent)) == [("resolved", "app/backup_stale"), ("resolved", "app/store_unreadable/backup_stale")]


def test_delivery_failures_are_kept_bounded():
    from dbops_pipelines.alerts.model import DeliveryResult

    state = AlertState()
    for i in range(30):
        state.record_failures([DeliveryResult("webhook http://h", "firing", f"k{i}", False, 3, "HTTP 500")], T0)
    assert len(state.failed_deliveries) == 20 and state.failed_deliveries[-1]["alert"] == "k29"


def test_event_conditions_are_reminded_until_resolved():
    state = AlertState()
    fire = Observation("app/check_failed/restore_verification", True, alert("app/check_failed/restore_verification"))
    plan_notifications([fire], state, T0, REMIND)
    assert plan_notifications([], state, T0 + timedelta(hours=1), REMIND) == []
    assert kinds(plan_notifications([], state, T0 + REMIND, REMIND)) == [("reminder", fire.key)]
