"""Alert sinks against real local receivers: an HTTP server and an SMTP server (STARTTLS + AUTH)."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest
import yaml

from dbops_pipelines.alerts.model import Alert, Notification
from dbops_pipelines.alerts.sinks import (
    EmailSink,
    FileSink,
    PagerDutySink,
    Sink,
    SlackSink,
    WebhookSink,
    build_sinks,
    deliver,
)
from dbops_pipelines.config import AlertSettings, load_config, parse_config
from dbops_pipelines.config_sinks import FileSinkSettings
from dbops_pipelines.errors import ConfigError
from dbops_pipelines_tests.receivers import (  # noqa: F401  (fixtures)
    SMTP_TEST_PASSWORD,
    SMTP_TEST_USER,
    closed_port_url,
    http_receiver,
    smtp_receiver,
)

NO_SLEEP = {"sleep": lambda s: None}
WEBHOOK_TOKEN = "XoXbT0kenInPath9f3a"
ROUTING_KEY = "R0utingKey0123456789abcdefABCDEF"
LEAKY_DSN = "postgresql://u:hunter2@h/db"


def make_alert(severity="critical", key="app/run_failed/backup_app", **kw) -> Alert:
    fields = dict(
        key=key, target="app", condition="run_failed", severity=severity,
        title="backup_app failed", message="The backup of app failed; check the run logs.",
        occurred_at="2024-05-01T03:00:00+00:00", run_id="abc123",
        run_url="http://dagster.local:3000/runs/abc123", error_excerpt="pg_dump: error: connection refused",
    )
    fields.update(kw)
    return Alert(**fields)


def firing(severity="critical", **kw) -> Notification:
    return Notification("firing", make_alert(severity, **kw))


def email_sink(smtp, **kw) -> EmailSink:
    args = dict(host=smtp.host, port=smtp.port, sender="dbops@example.test",
                recipients=["dba@example.test", "oncall@example.test"], username=SMTP_TEST_USER,
                password=SMTP_TEST_PASSWORD, starttls=True, min_severity="critical",
                ssl_context=smtp.client_ssl_context(), timeout=5)
    args.update(kw)
    return EmailSink(**args)


# --- payload shapes --------------------------------------------------------------------------

def test_webhook_posts_the_notification_as_json(http_receiver):
    n = firing()
    sink = WebhookSink(http_receiver.url("/hook"), headers={"Authorization": "Bearer abc"})
    [result] = deliver([n], [sink], **NO_SLEEP)
    assert result.ok and result.attempts == 1 and result.error is None
    assert result.sink == f"webhook http://127.0.0.1:{http_receiver.port}"
    [req] = http_receiver.received("/hook")
    assert req.headers["Authorization"] == "Bearer abc"
    assert req.headers["Content-Type"] == "application/json"
    assert req.body == {"event": "firing", "subject": n.subject, "text": n.text(), "alert": n.alert.to_dict()}


def test_slack_payload_has_a_mrkdwn_section_with_the_run_link(http_receiver):
    n = firing(message="x < y & z")
    [result] = deliver([n], [SlackSink(http_receiver.url("/slack/services/T0/B0/" + WEBHOOK_TOKEN))], **NO_SLEEP)
    assert result.ok
    assert WEBHOOK_TOKEN not in result.sink
    [req] = http_receiver.received("/slack")
    assert req.body["text"] == n.subject
    [section] = req.body["blocks"]
    assert section["type"] == "section" and section["text"]["type"] == "mrkdwn"
    text = section["text"]["text"]
    assert "x &lt; y &amp; z" in text and "target: app" in text
    assert "<http://dagster.local:3000/runs/abc123|" in text


def test_pagerduty_trigger_then_resolve_with_the_same_dedup_key(http_receiver):
    sink = PagerDutySink(ROUTING_KEY, url=http_receiver.url("/pagerduty/v2/enqueue"))
    alert = make_alert("critical")
    results = deliver([Notification("firing", alert), Notification("resolved", alert)], [sink], **NO_SLEEP)
    assert [r.ok for r in results] == [True, True]
    assert ROUTING_KEY not in results[0].sink
    trigger, resolve = [r.body for r in http_receiver.received("/pagerduty")]
    assert trigger["routing_key"] == ROUTING_KEY and trigger["event_action"] == "trigger"
    assert trigger["dedup_key"] == alert.key
    payload = trigger["payload"]
    assert payload["summary"] == Notification("firing", alert).subject
    assert payload["source"] == "dbops:app" and payload["severity"] == "critical"
    assert payload["timestamp"] == alert.occurred_at
    assert payload["custom_details"]["condition"] == "run_failed"
    assert payload["custom_details"]["error_excerpt"] == alert.error_excerpt
    assert trigger["links"] == [{"href": alert.run_url, "text": "Dagster run"}]
    assert resolve == {"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": alert.key}


def test_pagerduty_summary_is_capped_and_severity_mapped(http_receiver):
    sink = PagerDutySink(ROUTING_KEY, url=http_receiver.url("/pagerduty"), min_severity="info")
    deliver([firing("info", title="t" * 2000, run_url=None)], [sink], **NO_SLEEP)
    [req] = http_receiver.received("/pagerduty")
    assert len(req.body["payload"]["summary"]) == 1024
    assert req.body["payload"]["severity"] == "info"
    assert "links" not in req.body


def test_email_over_starttls_with_auth(smtp_receiver):
    n = firing()
    [result] = deliver([n], [email_sink(smtp_receiver)], **NO_SLEEP)
    assert result.ok, result.error
    assert result.sink == "email to dba@example.test, oncall@example.test"
    [mail] = smtp_receiver.messages
    assert mail.tls and mail.login == SMTP_TEST_USER
    assert mail.mail_from == "dbops@example.test"
    assert mail.rcpt_tos == ["dba@example.test", "oncall@example.test"]
    assert mail.message["Subject"] == n.subject
    assert mail.message["To"] == "dba@example.test, oncall@example.test"
    assert mail.message.get_content_type() == "text/plain"
    assert mail.message.get_content().splitlines() == n.text().splitlines()   # CRLF on the wire


def test_email_wrong_password_or_no_tls_fails_without_leaking(smtp_receiver):
    wrong = "not-the-Password-777"
    bad_login = email_sink(smtp_receiver, password=wrong)
    no_tls = email_sink(smtp_receiver, starttls=False)
    untrusted = email_sink(smtp_receiver, ssl_context=None)   # default trust store: self-signed rejected
    results = deliver([firing()], [bad_login, no_tls, untrusted], attempts=2, **NO_SLEEP)
    assert [(r.ok, r.attempts) for r in results] == [(False, 2)] * 3
    assert "SMTPAuthenticationError" in results[0].error
    assert "CERTIFICATE_VERIFY_FAILED" in results[2].error
    for r in results:
        assert wrong not in r.error and SMTP_TEST_PASSWORD not in r.error
    assert smtp_receiver.messages == []
    assert (SMTP_TEST_USER, False) in smtp_receiver.auth_attempts


def file_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_file_sink_appends_one_json_line_per_notification_in_a_0600_file(tmp_path):
    path = tmp_path / "alerts" / "dbops.jsonl"          # its folder does not exist yet
    sink = FileSink(path, min_severity="info")
    alert = make_alert("critical")
    results = deliver([Notification(k, alert) for k in ("firing", "reminder", "resolved")], [sink], **NO_SLEEP)
    assert [(r.ok, r.attempts, r.sink) for r in results] == [(True, 1, f"file {path}")] * 3
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = file_lines(path)
    assert [line["event"] for line in lines] == ["firing", "reminder", "resolved"]
    assert [line["subject"] for line in lines] == [Notification(k, alert).subject for k in ("firing", "reminder", "resolved")]
    assert all(line["alert"] == alert.to_dict() for line in lines)
    assert all(set(line) == {"at", "event", "subject", "alert"} for line in lines)
    # appended, never rewritten: a second delivery adds a line and keeps the earlier ones
    deliver([firing("warning", key="app/backup_stale", condition="backup_stale")], [sink], **NO_SLEEP)
    assert [line["alert"]["key"] for line in file_lines(path)] == [alert.key] * 3 + ["app/backup_stale"]


def test_file_sink_follows_severity_routing(tmp_path):
    path = tmp_path / "alerts.jsonl"
    sink = FileSink(path, min_severity="critical")
    assert deliver([firing("warning")], [sink], **NO_SLEEP) == []
    assert not path.exists()


def test_file_sink_redacts_dsn_passwords(tmp_path):
    path = tmp_path / "alerts.jsonl"
    alert = make_alert(message=f"could not connect to {LEAKY_DSN}", error_excerpt=f"psql: {LEAKY_DSN} failed",
                       title=f"backup of {LEAKY_DSN} failed")
    [result] = deliver([Notification("firing", alert)], [FileSink(path)], **NO_SLEEP)
    assert result.ok
    text = path.read_text()
    assert "hunter2" not in text and "postgresql://u:***@h/db" in text


def test_unwritable_file_sink_is_a_failed_delivery_while_others_deliver(tmp_path, http_receiver):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the sink's folder should be")
    sinks = [FileSink(blocked / "alerts.jsonl"), WebhookSink(http_receiver.url("/hook"))]
    broken, hook = deliver([firing()], sinks, attempts=2, **NO_SLEEP)
    assert not broken.ok and broken.attempts == 2
    assert broken.error.startswith(("FileExistsError", "NotADirectoryError")) and str(blocked) in broken.error
    assert hook.ok and len(http_receiver.received("/hook")) == 1


# --- routing ---------------------------------------------------------------------------------

def test_routing_by_min_severity(http_receiver, smtp_receiver):
    sinks = [
        WebhookSink(http_receiver.url("/hook")),
        SlackSink(http_receiver.url("/slack")),
        PagerDutySink(ROUTING_KEY, url=http_receiver.url("/pagerduty")),
        email_sink(smtp_receiver),
    ]
    warning = make_alert("warning", key="app/backup_stale", condition="backup_stale")
    results = deliver([Notification("firing", warning), Notification("resolved", warning)], sinks, **NO_SLEEP)
    assert [(r.sink.split()[0], r.notification_kind, r.ok) for r in results] == [
        ("webhook", "firing", True), ("slack", "firing", True),
        ("webhook", "resolved", True), ("slack", "resolved", True)]
    assert http_receiver.received("/pagerduty") == [] and smtp_receiver.messages == []

    results = deliver([firing("critical")], sinks, **NO_SLEEP)
    assert [r.sink.split()[0] for r in results if r.ok] == ["webhook", "slack", "pagerduty", "email"]
    assert len(http_receiver.received("/pagerduty")) == 1 and len(smtp_receiver.messages) == 1

    results = deliver([firing("info")], sinks, **NO_SLEEP)
    assert results == []


# --- failures --------------------------------------------------------------------------------

def test_sink_answering_500_is_retried_and_reported_while_others_deliver(http_receiver):
    sleeps = []
    http_receiver.fail_next(100, path_prefix="/hook")
    sinks = [WebhookSink(http_receiver.url("/hook/" + WEBHOOK_TOKEN)), SlackSink(http_receiver.url("/slack"))]
    down, slack = deliver([firing()], sinks, attempts=3, backoff=0.5, sleep=sleeps.append)
    assert not down.ok and down.attempts == 3
    assert "HTTP 500" in down.error and WEBHOOK_TOKEN not in down.error
    assert sleeps == [0.5, 1.0]                     # exponential backoff, no sleep after the last try
    assert len(http_receiver.received("/hook", ok_only=False)) == 3
    assert slack.ok and len(http_receiver.received("/slack")) == 1


def test_transient_failure_recovers_within_attempts(http_receiver):
    http_receiver.fail_next(2, path_prefix="/hook")
    [result] = deliver([firing()], [WebhookSink(http_receiver.url("/hook"))], attempts=3, **NO_SLEEP)
    assert result.ok and result.attempts == 3 and result.error is None
    assert len(http_receiver.received("/hook")) == 1


def test_closed_port_is_retried_and_reported_while_others_deliver(http_receiver, smtp_receiver):
    dead = closed_port_url("/services/T0/B0/" + WEBHOOK_TOKEN)
    sinks = [WebhookSink(dead), PagerDutySink(ROUTING_KEY, url=closed_port_url("/v2/enqueue")),
             email_sink(smtp_receiver, port=int(closed_port_url().split(":")[2].split("/")[0])),
             SlackSink(http_receiver.url("/slack"))]
    results = deliver([firing()], sinks, attempts=2, **NO_SLEEP)
    assert [(r.ok, r.attempts) for r in results] == [(False, 2), (False, 2), (False, 2), (True, 1)]
    assert "ConnectionError" in results[0].error
    for r in results[:3]:
        assert WEBHOOK_TOKEN not in r.error and ROUTING_KEY not in r.error and SMTP_TEST_PASSWORD not in r.error
        assert len(r.error) <= 300
    assert len(http_receiver.received("/slack")) == 1


def test_stopped_receiver_counts_as_down(http_receiver):
    url = http_receiver.url("/hook")
    http_receiver.stop()
    [result] = deliver([firing()], [WebhookSink(url)], attempts=2, **NO_SLEEP)
    assert not result.ok and result.attempts == 2


def test_delivery_errors_never_contain_secrets(http_receiver):
    # the receiver echoes the path and the start of the body in its 500 answer, as some servers do
    http_receiver.fail_next(100)
    sinks = [WebhookSink(http_receiver.url(f"/hook/{WEBHOOK_TOKEN}?token={WEBHOOK_TOKEN}x"),
                         headers={"X-Api-Key": "HeaderSecret-42"}),
             SlackSink(http_receiver.url("/slack/services/T0/B0/" + WEBHOOK_TOKEN)),
             PagerDutySink(ROUTING_KEY, url=http_receiver.url("/pagerduty"))]
    results = deliver([firing()], sinks, attempts=1, **NO_SLEEP)
    assert len(results) == 3 and not any(r.ok for r in results)
    for r in results:
        assert "HTTP 500" in r.error and "***" in r.error
        for secret in (WEBHOOK_TOKEN, ROUTING_KEY, "HeaderSecret-42"):
            assert secret not in r.error and secret not in r.sink


def test_exception_text_is_redacted_and_truncated():
    class Broken(Sink):
        def send(self, n):
            raise RuntimeError(f"cannot reach {LEAKY_DSN} password=sekrit " + "x" * 1000)

    [result] = deliver([firing()], [Broken("broken", "info")], attempts=1, **NO_SLEEP)
    assert not result.ok and len(result.error) <= 300
    assert "hunter2" not in result.error and "sekrit" not in result.error
    assert "postgresql://u:***@h/db" in result.error


def test_dsn_passwords_are_redacted_in_every_payload(http_receiver, smtp_receiver):
    alert = make_alert("critical", message=f"could not connect to {LEAKY_DSN}",
                       error_excerpt=f'psql: error: connection to "{LEAKY_DSN}" failed',
                       title=f"backup of {LEAKY_DSN} failed")
    sinks = [WebhookSink(http_receiver.url("/hook")), SlackSink(http_receiver.url("/slack")),
             PagerDutySink(ROUTING_KEY, url=http_receiver.url("/pagerduty")), email_sink(smtp_receiver)]
    results = deliver([Notification("firing", alert), Notification("reminder", alert),
                       Notification("resolved", alert)], sinks, **NO_SLEEP)
    assert len(results) == 12 and all(r.ok for r in results)
    assert len(http_receiver.requests) == 9 and len(smtp_receiver.messages) == 3
    for req in http_receiver.requests:
        assert b"hunter2" not in req.raw
    for path in ("/hook", "/slack", "/pagerduty"):
        assert "postgresql://u:***@h/db" in json.dumps(http_receiver.received(path)[0].body)
    for mail in smtp_receiver.messages:
        raw = mail.message.as_string()
        assert "hunter2" not in raw and "postgresql://u:***@h/db" in raw


# --- build_sinks: typed settings, each sink on its own -----------------------------------------

def settings(*specs: dict) -> list:
    """Sink settings as dbops.yaml's alerts.sinks would give them."""
    return AlertSettings.model_validate({"sinks": list(specs)}).sinks


def test_build_sinks_from_settings():
    env = {"SLACK_URL": "https://hooks.slack.com/services/T0/B0/" + WEBHOOK_TOKEN,
           "HOOK_URL": "https://hooks.example.com/in/" + WEBHOOK_TOKEN, "HOOK_KEY": "HeaderSecret-42",
           "SMTP_PW": SMTP_TEST_PASSWORD, "PD_KEY": ROUTING_KEY}
    slack, hook, mail, pd = build_sinks(settings(
        {"kind": "slack", "url_env": "SLACK_URL"},
        {"kind": "webhook", "url_env": "HOOK_URL", "headers_env": {"X-Api-Key": "HOOK_KEY"},
         "min_severity": "info", "timeout": 3},
        {"kind": "email", "host": "smtp.example.com", "username": "u", "password_env": "SMTP_PW",
         "sender": "dbops@example.com", "recipients": "dba@example.com", "min_severity": "critical"},
        {"kind": "pagerduty", "routing_key_env": "PD_KEY"},
    ), environ=env)
    assert isinstance(slack, SlackSink) and slack.url == env["SLACK_URL"] and slack.min_severity == "warning"
    assert isinstance(hook, WebhookSink) and hook.headers == {"X-Api-Key": "HeaderSecret-42"}
    assert hook.min_severity == "info" and hook.timeout == 3
    assert isinstance(mail, EmailSink) and mail.port == 587 and mail.starttls and mail.password == SMTP_TEST_PASSWORD
    assert mail.recipients == ["dba@example.com"]
    # from dbops.yaml every kind defaults to warning, as it always has; PagerDuty included
    assert isinstance(pd, PagerDutySink) and pd.routing_key == ROUTING_KEY and pd.min_severity == "warning"
    assert pd.url == "https://events.pagerduty.com/v2/enqueue"
    assert [s.name for s in (slack, hook, mail, pd)] == [
        "slack https://hooks.slack.com", "webhook https://hooks.example.com", "email to dba@example.com",
        "pagerduty https://events.pagerduty.com"]
    for s in (slack, hook, mail, pd):
        assert not any(secret in repr(s) for secret in (WEBHOOK_TOKEN, ROUTING_KEY, SMTP_TEST_PASSWORD))


def test_file_sink_from_settings_resolves_relative_paths_against_the_config_folder(tmp_path):
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    path = conf_dir / "dbops.yaml"
    path.write_text(yaml.safe_dump({"alerts": {"sinks": [
        {"kind": "file", "path": "alerts.jsonl", "min_severity": "info"},
        {"kind": "file", "path": str(tmp_path / "abs.jsonl")},
        {"kind": "file", "path": "logs/../more.jsonl"}]}}))
    cfg = load_config(path)
    assert [s.path for s in cfg.alerts.sinks] == [str(conf_dir / "alerts.jsonl"), str(tmp_path / "abs.jsonl"),
                                                  str(conf_dir / "more.jsonl")]
    relative, absolute, _ = build_sinks(cfg.alerts.sinks, environ={})
    assert isinstance(relative, FileSink) and relative.path == conf_dir / "alerts.jsonl"
    assert relative.min_severity == "info" and absolute.min_severity == "warning"
    # loaded from another working directory, the same file still points at the same place
    here = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert load_config(Path("etc/dbops.yaml")).alerts.sinks[0].path == str(conf_dir / "alerts.jsonl")
    finally:
        os.chdir(here)


def test_file_sink_settings_are_typed():
    [spec] = settings({"kind": "file", "path": "/var/log/dbops/alerts.jsonl"})
    assert isinstance(spec, FileSinkSettings) and spec.min_severity == "warning"


def test_unset_variable_fails_that_sink_only_and_the_webhook_still_delivers(http_receiver):
    # Before: build_sinks raised for the unset variable, the sensor tick failed, nobody was told.
    sinks = build_sinks(settings(
        {"kind": "slack", "url_env": "DBOPS_TEST_UNSET_SLACK"},
        {"kind": "webhook", "url": http_receiver.url("/hook")},
    ), environ={"OTHER": "secret-value"})
    slack, hook = deliver([firing()], sinks, **NO_SLEEP)
    assert hook.ok and len(http_receiver.received("/hook")) == 1
    assert not slack.ok and slack.attempts == 0 and slack.sink == "slack (alerts.sinks[0])"
    assert "DBOPS_TEST_UNSET_SLACK" in slack.error and "is not set" in slack.error and "export" in slack.error
    assert "secret-value" not in slack.error


@pytest.mark.parametrize("spec, var", [
    ({"kind": "slack", "url_env": "DBOPS_TEST_MISSING_SLACK"}, "DBOPS_TEST_MISSING_SLACK"),
    ({"kind": "webhook", "url": "https://h.example/x", "headers_env": {"Authorization": "DBOPS_TEST_NO_AUTH"}},
     "DBOPS_TEST_NO_AUTH"),
    ({"kind": "email", "host": "h", "username": "u", "password_env": "DBOPS_TEST_NO_PW", "sender": "a@b",
      "recipients": ["c@d"]}, "DBOPS_TEST_NO_PW"),
    ({"kind": "pagerduty", "routing_key_env": "DBOPS_TEST_NO_PD"}, "DBOPS_TEST_NO_PD"),
])
def test_missing_variable_is_a_failed_delivery_naming_it(spec, var):
    [sink] = build_sinks(settings(spec), environ={"OTHER": "secret-value"})
    [result] = deliver([firing()], [sink], **NO_SLEEP)
    assert not result.ok and result.attempts == 0
    assert var in result.error and "secret-value" not in result.error


def test_unbuildable_sink_follows_severity_routing():
    [sink] = build_sinks(settings({"kind": "pagerduty", "routing_key_env": "DBOPS_TEST_NO_PD",
                                   "min_severity": "critical"}), environ={})
    assert deliver([firing("warning")], [sink], **NO_SLEEP) == []   # nothing it would have received


def test_malformed_url_in_the_environment_is_reported_without_quoting_it():
    leaky = "https://hooks.example.com:notaport/services/" + WEBHOOK_TOKEN
    [sink] = build_sinks(settings({"kind": "slack", "url_env": "SLACK_URL"}), environ={"SLACK_URL": leaky})
    [result] = deliver([firing()], [sink], **NO_SLEEP)
    assert not result.ok and "SLACK_URL" in result.error and "http(s) URL" in result.error
    assert WEBHOOK_TOKEN not in result.error and "notaport" not in result.error


def test_missing_ca_file_fails_that_sink_with_the_path(tmp_path):
    missing = tmp_path / "nope.pem"
    [sink] = build_sinks(settings({"kind": "email", "host": "h", "sender": "a@b", "recipients": ["c@d"],
                                   "ca_file": str(missing)}))
    [result] = deliver([firing()], [sink], **NO_SLEEP)
    assert not result.ok and str(missing) in result.error and "ca_file" in result.error


# --- sink settings: strict, and never a literal secret -----------------------------------------

@pytest.mark.parametrize("spec, needle", [
    ({"kind": "carrier-pigeon"}, "does not match any of the expected tags"),
    ({"kind": "slack"}, "url_env"),
    ({"kind": "slack", "url": "https://hooks.slack.com/services/T0/B0/x"}, "Slack webhook URL"),
    ({"kind": "email", "host": "h", "sender": "a@b"}, "recipients"),
    ({"kind": "email", "host": "h", "sender": "a@b", "recipients": []}, "recipients"),
    ({"kind": "email", "host": "h", "sender": "a@b", "recipients": ["c@d"], "username": "u",
      "passwrd_env": "PW"}, r"passwrd_env: Extra inputs are not permitted"),
    ({"kind": "email", "host": "h", "sender": "a@b", "recipients": ["c@d"], "password_env": "PW"},
     "without username"),
    ({"kind": "email", "host": "h", "sender": "a@b", "recipients": ["c@d"], "port": "587"}, "port"),
    ({"kind": "email", "host": "h", "sender": "a@b", "recipients": ["c@d"], "starttls": "no"}, "starttls"),
    ({"kind": "pagerduty"}, "routing_key_env"),
    ({"kind": "webhook"}, "exactly one of url"),
    ({"kind": "webhook", "url": "https://h.example/x", "url_env": "HOOK"}, "exactly one of url"),
    ({"kind": "webhook", "url": "ftp://h.example/x"}, "http"),
    ({"kind": "webhook", "url": "https://h.example/x", "min_severity": "loud"}, "min_severity"),
    ({"kind": "webhook", "url": "https://h.example/x", "timeout": True}, "timeout"),
    ({"kind": "file"}, "path"),
    ({"kind": "file", "path": ""}, "path"),
    ({"kind": "file", "path": "/var/log/dbops/"}, "names a folder"),
    ({"kind": "file", "path": "~/alerts.jsonl"}, "absolute path"),
    ({"kind": "file", "path": 7}, "path"),
    ({"kind": "file", "path": "a.jsonl", "timeout": 5}, "does not apply to a file sink"),
    ({"kind": "file", "path": "a.jsonl", "fiel_mode": "0644"}, r"fiel_mode: Extra inputs are not permitted"),
])
def test_bad_sink_settings_are_rejected_with_the_key_path(spec, needle):
    with pytest.raises(ConfigError, match=needle) as err:
        parse_config({"alerts": {"sinks": [spec]}})
    assert "alerts.sinks.0" in str(err.value)


SECRET = "xoxb-Literal-Secret-0451"


@pytest.mark.parametrize("spec, key", [
    ({"kind": "email", "host": "h", "sender": "a@b", "recipients": ["c@d"], "username": "u",
      "password": SECRET}, "password"),
    ({"kind": "pagerduty", "routing_key": SECRET}, "routing_key"),
    ({"kind": "webhook", "url": "https://h.example/x", "headers": {"Authorization": SECRET}}, "headers"),
    ({"kind": "slack", "url": f"https://hooks.slack.com/services/{SECRET}"}, "url"),
    ({"kind": "webhook", "url": f"https://h.example/x?token={SECRET}"}, "url"),
    ({"kind": "webhook", "url": f"https://user:{SECRET}@h.example/x"}, "url"),
    # the secret pasted where the variable's name belongs
    ({"kind": "slack", "url_env": f"https://hooks.slack.com/services/{SECRET}"}, "url_env"),
    ({"kind": "pagerduty", "routing_key_env": SECRET}, "routing_key_env"),
    ({"kind": "webhook", "url": "https://h.example/x", "headers_env": {"Authorization": f"Bearer {SECRET}"}},
     "headers_env"),
])
def test_a_literal_secret_in_the_file_is_rejected_and_not_echoed(spec, key):
    with pytest.raises(ConfigError, match=key) as err:
        parse_config({"alerts": {"sinks": [spec]}})
    assert SECRET not in str(err.value) and SECRET not in (err.value.hint or "")


# --- the sensor tick ------------------------------------------------------------------------------

def test_sensor_tick_survives_a_misconfigured_sink(write_config, http_receiver):
    """A target never backed up fires backup_stale and verification_stale: the webhook gets them
    although the Slack sink before it has no URL in the environment, and the tick records the
    Slack failures in its cursor (before: the tick raised and nothing was delivered anywhere)."""
    import dagster as dg

    from dbops_pipelines.config import load_config
    from dbops_pipelines.defs.alerts import alert_scope, evaluate_alerts
    from dbops_pipelines.defs.spec import discover_features
    from dbops_pipelines.definitions import build_definitions

    path = write_config({"app": "postgresql://dbops@127.0.0.1:1/app"}, alerts={"sinks": [
        {"kind": "slack", "url_env": "DBOPS_TEST_UNSET_SLACK"},
        {"kind": "webhook", "url": http_receiver.url("/hook")}]})
    with dg.instance_for_test() as instance:
        scope = alert_scope(build_definitions(path))
        result = evaluate_alerts(dg.build_sensor_context(instance=instance), load_config(path), scope, discover_features())
    hooks = {r.body["alert"]["condition"]: r.body["event"] for r in http_receiver.received("/hook")}
    assert hooks == {"backup_stale": "firing", "verification_stale": "firing"}
    failures = json.loads(result.cursor)["failed_deliveries"]
    assert sorted((f["sink"], f["alert"], f["attempts"]) for f in failures) == [
        ("slack (alerts.sinks[0])", "app/backup_stale", 0), ("slack (alerts.sinks[0])", "app/verification_stale", 0)]
    assert all("DBOPS_TEST_UNSET_SLACK" in f["error"] for f in failures)


def test_the_documented_sinks_are_valid_and_build_from_the_environment():
    text = (Path(__file__).resolve().parents[1] / "docs" / "alerts.md").read_text()
    block = re.search(r"## Wiring the sinks.*?```yaml\n(.*?)```", text, re.S)[1]
    cfg = parse_config(yaml.safe_load(block))
    env = {"SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/" + WEBHOOK_TOKEN, "HOOK_AUTH": "Bearer x",
           "SMTP_PASSWORD": SMTP_TEST_PASSWORD, "PAGERDUTY_ROUTING_KEY": ROUTING_KEY}
    # the example's private CA file does not exist here
    specs = [s.model_copy(update={"ca_file": None}) if s.kind == "email" else s for s in cfg.alerts.sinks]
    sinks = build_sinks(specs, environ=env)
    assert [type(s) for s in sinks] == [SlackSink, WebhookSink, EmailSink, PagerDutySink]
    assert [s.min_severity for s in sinks] == ["warning", "info", "critical", "critical"]


def test_the_documented_file_sink_is_valid(tmp_path):
    text = (Path(__file__).resolve().parents[1] / "docs" / "alerts.md").read_text()
    block = re.search(r"## A local file.*?```yaml\n(.*?)```", text, re.S)[1]
    path = tmp_path / "dbops.yaml"
    path.write_text(block)
    [spec] = load_config(path).alerts.sinks
    assert isinstance(spec, FileSinkSettings) and spec.path == str(tmp_path / "alerts.jsonl")
    [sink] = build_sinks([spec], environ={})
    assert isinstance(sink, FileSink) and sink.min_severity == "info"
    example = json.loads(re.search(r"## A local file.*?```json\n(.*?)```", text, re.S)[1])
    assert set(example) == {"at", "event", "subject", "alert"} and set(example["alert"]) == set(make_alert().to_dict())


def test_a_hanging_sink_delays_no_other_and_the_tick_keeps_its_budget(http_receiver):
    """A webhook that accepts the connection and never answers (its process is stuck) must not
    hold the sensor tick past its budget, nor delay the sinks beside it."""
    import socket
    import time
    from datetime import datetime, timezone

    from dbops_pipelines.alerts.dispatch import AlertState

    stuck = socket.socket()
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(8)   # connections are accepted by the kernel; nothing ever answers
    try:
        sinks = [WebhookSink(f"http://127.0.0.1:{stuck.getsockname()[1]}/hook", timeout=20),
                 WebhookSink(http_receiver.url("/hook"))]
        started = time.monotonic()
        results = deliver([firing()], sinks, budget_seconds=1.5, **NO_SLEEP)
        assert time.monotonic() - started < 5
    finally:
        stuck.close()
    assert [(r.ok, r.sink.startswith("webhook http://127.0.0.1")) for r in results] == [(False, True), (True, True)]
    assert "retried next tick" in results[0].error
    assert len(http_receiver.received("/hook")) == 1
    state = AlertState()
    state.record_failures(results, datetime.now(timezone.utc), [firing()])
    assert [(p["sink"], p["kind"]) for p in state.pending] == [(results[0].sink, "firing")]


def test_a_missed_resolve_is_retried_on_the_next_tick(tmp_path):
    """A "resolved" a sink missed is kept and sent again next tick (else a PagerDuty incident
    would stay open for ever); once delivered it is forgotten."""
    from datetime import datetime, timezone

    from dbops_pipelines.alerts.dispatch import AlertState

    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the sink's folder should be")
    sink = FileSink(blocked / "alerts.jsonl")
    resolved = Notification("resolved", make_alert())
    state, now = AlertState(), datetime.now(timezone.utc)
    results = deliver([resolved], [sink], **NO_SLEEP)
    state.record_failures(results, now, [resolved])
    assert not results[0].ok and len(state.pending) == 1
    blocked.unlink()                                   # the disk is fixed
    retries = state.take_pending()
    results = deliver([], [sink], retries=retries, **NO_SLEEP)
    state.record_failures(results, now, [n for n, _ in retries])
    assert [r.ok for r in results] == [True] and state.pending == []
    assert [line["event"] for line in file_lines(blocked / "alerts.jsonl")] == ["resolved"]
    assert AlertState.from_json(state.to_json()).pending == []


def test_sinks_that_describe_themselves_alike_keep_apart(monkeypatch):
    """Two PagerDuty services have the same description; a retry kept for one must reach it, not the other."""
    from dbops_pipelines.alerts.sinks import build_sinks

    monkeypatch.setenv("PD_A", "key-a")
    monkeypatch.setenv("PD_B", "key-b")
    settings = AlertSettings.model_validate({"sinks": [{"kind": "pagerduty", "routing_key_env": "PD_A"},
                                                       {"kind": "pagerduty", "routing_key_env": "PD_B"}]})
    names = [s.name for s in build_sinks(settings.sinks)]
    assert len(set(names)) == 2 and names[1].endswith("(alerts.sinks[1])")
