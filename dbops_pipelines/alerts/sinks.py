"""Where alerts go: a generic JSON webhook, Slack, e-mail (SMTP), PagerDuty (Events API v2) and a
local file (one JSON line per notification, for operators without any of those services).

Every sink has the same small interface (``accepts`` for severity routing, ``send`` for one
attempt that raises on failure); ``deliver`` fans notifications out with retries and turns
every failure into a ``DeliveryResult`` so that one sink being down never stops the others.
``build_sinks`` makes sinks from the typed settings of dbops.yaml (config_sinks.py), each on
its own, so that one misconfigured sink (its variable unset) does not stop the others either.
Nothing secret (webhook tokens, routing keys, SMTP passwords, DSN passwords) may leave through
a sink's name, a payload or a delivery error.
"""

from __future__ import annotations

import json
import os
import smtplib
import ssl
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import replace
from datetime import datetime, timezone
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import urlsplit

import requests

from dbops_pipelines.alerts.model import SEVERITIES, Alert, DeliveryResult, Notification, severity_rank
from dbops_pipelines.config_sinks import (EmailSinkSettings, FileSinkSettings, PagerDutySinkSettings, SinkSettings,
                                          SlackSinkSettings, WebhookSinkSettings)
from dbops_pipelines.errors import ConfigError
from dbops_pipelines.redact import redact
from dbops_pipelines.retry import retry_call

_MAX_ERROR = 300


def _origin(url: str) -> str:
    """scheme://host[:port] of a URL: safe to show (no user info, path or query)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def _url_secrets(url: str) -> list[str]:
    """The parts of a URL that may carry a token: itself, its path+query, long path segments."""
    parts = urlsplit(url)
    tail = parts.path + (f"?{parts.query}" if parts.query else "")
    found = [url, tail if len(tail) > 1 else "", parts.query, parts.password or ""]
    found += [seg for seg in parts.path.split("/") if len(seg) >= 12]
    return [s for s in found if s]


def _sanitized(n: Notification) -> Notification:
    """The notification with DSN passwords removed from every free-text field of the alert."""
    a = n.alert
    clean = {f: redact(getattr(a, f)) for f in ("title", "message", "error_excerpt", "run_url")
             if getattr(a, f)}
    return replace(n, alert=replace(a, **clean))


class Sink(ABC):
    name: str
    min_severity: str

    def __init__(self, name: str, min_severity: str):
        if min_severity not in SEVERITIES:
            raise ConfigError(f"unknown alert severity {min_severity!r}", f"use one of {', '.join(SEVERITIES)}")
        self.name, self.min_severity = name, min_severity

    def accepts(self, n: Notification) -> bool:
        # resolved notifications follow the same rule, so they reach exactly where the firing went
        return severity_rank(n.alert.severity) >= severity_rank(self.min_severity)

    @abstractmethod
    def send(self, n: Notification) -> None:
        """One delivery attempt; raises on failure."""

    def secrets(self) -> list[str]:
        """Secret values this sink knows of, stripped from any error it reports."""
        return []

    def scrub(self, text: str) -> str:
        text = redact(text)
        for secret in sorted(self.secrets(), key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} min_severity={self.min_severity}>"


class _HttpSink(Sink):
    def __init__(self, kind: str, url: str, min_severity: str, headers: dict[str, str] | None, timeout: float):
        super().__init__(f"{kind} {_origin(url)}", min_severity)
        self.url, self.headers, self.timeout = url, dict(headers or {}), timeout

    def secrets(self) -> list[str]:
        return _url_secrets(self.url) + [v for v in self.headers.values() if v]

    def _post(self, payload: dict) -> requests.Response:
        resp = requests.post(self.url, json=payload, headers=self.headers, timeout=self.timeout)
        if not 200 <= resp.status_code < 300:
            raise RuntimeError(f"HTTP {resp.status_code} from {_origin(self.url)}: {resp.text[:200].strip()}")
        return resp


class WebhookSink(_HttpSink):
    def __init__(self, url: str, min_severity: str = "warning", headers: dict[str, str] | None = None,
                 timeout: float = 10):
        super().__init__("webhook", url, min_severity, headers, timeout)

    def send(self, n: Notification) -> None:
        n = _sanitized(n)
        self._post({"event": n.kind, "subject": n.subject, "text": n.text(), "alert": n.alert.to_dict()})


def _mrkdwn_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class SlackSink(_HttpSink):
    def __init__(self, url: str, min_severity: str = "warning", timeout: float = 10):
        super().__init__("slack", url, min_severity, None, timeout)

    def send(self, n: Notification) -> None:
        n = _sanitized(n)
        body = _mrkdwn_escape(n.text())[:2800]   # a section's text is limited to 3000 characters
        if n.alert.run_url:
            body += f"\n<{n.alert.run_url}|View the Dagster run>"
        self._post({"text": n.subject, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": body}}]})


class EmailSink(Sink):
    def __init__(self, host: str, port: int, sender: str, recipients: list[str], username: str | None = None,
                 password: str | None = None, starttls: bool = True, min_severity: str = "warning",
                 timeout: float = 10, ssl_context: ssl.SSLContext | None = None):
        if not recipients:
            raise ConfigError("an e-mail alert sink has no recipients", "list at least one address in `recipients`")
        super().__init__(f"email to {', '.join(recipients)}", min_severity)
        self.host, self.port, self.sender, self.recipients = host, int(port), sender, list(recipients)
        self.username, self.password, self.starttls = username, password, starttls
        self.timeout, self.ssl_context = timeout, ssl_context

    def secrets(self) -> list[str]:
        return [self.password] if self.password else []

    def send(self, n: Notification) -> None:
        n = _sanitized(n)
        msg = EmailMessage()
        msg["Subject"], msg["From"], msg["To"] = n.subject, self.sender, ", ".join(self.recipients)
        msg.set_content(n.text())
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            smtp.ehlo()
            if self.starttls:
                smtp.starttls(context=self.ssl_context or ssl.create_default_context())
                smtp.ehlo()
            if self.username:
                smtp.login(self.username, self.password or "")
            smtp.send_message(msg, from_addr=self.sender, to_addrs=self.recipients)


class PagerDutySink(_HttpSink):
    def __init__(self, routing_key: str, url: str = "https://events.pagerduty.com/v2/enqueue",
                 min_severity: str = "critical", timeout: float = 10):
        super().__init__("pagerduty", url, min_severity, None, timeout)
        self.routing_key = routing_key

    def secrets(self) -> list[str]:
        return super().secrets() + [self.routing_key]

    def send(self, n: Notification) -> None:
        n = _sanitized(n)
        a: Alert = n.alert
        if n.kind == "resolved":
            self._post({"routing_key": self.routing_key, "event_action": "resolve", "dedup_key": a.key})
            return
        details = {k: v for k, v in {"notification": n.kind, "target": a.target, "condition": a.condition,
                                     "message": a.message, "run_id": a.run_id,
                                     "error_excerpt": a.error_excerpt}.items() if v}
        event = {"routing_key": self.routing_key, "event_action": "trigger", "dedup_key": a.key,
                 "payload": {"summary": n.subject[:1024], "source": f"dbops:{a.target}",
                             "severity": {"critical": "critical", "warning": "warning"}.get(a.severity, "info"),
                             "timestamp": a.occurred_at, "custom_details": details}}
        if a.run_url:
            event["links"] = [{"href": a.run_url, "text": "Dagster run"}]
        self._post(event)


class FileSink(Sink):
    """Appends one JSON line per notification (firing, reminder, resolved) to a local file, created
    0600, so an operator without any alerting service can `tail -f` it. A line is
    ``{"at", "event", "subject", "alert": {...}}`` with the alert as the webhook sends it (DSN
    passwords redacted). Each line is one O_APPEND write, so on a local filesystem the lines of two
    writers do not interleave. An existing file keeps its own mode."""

    def __init__(self, path: str | Path, min_severity: str = "warning"):
        self.path = Path(path)
        super().__init__(f"file {self.path}", min_severity)

    def send(self, n: Notification) -> None:
        n = _sanitized(n)
        line = json.dumps({"at": datetime.now(timezone.utc).isoformat(), "event": n.kind, "subject": n.subject,
                           "alert": n.alert.to_dict()}, sort_keys=True) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            data = line.encode()
            written = os.write(fd, data)
            if written != len(data):   # a full disk: say so rather than leave half a line unexplained
                raise OSError(f"only {written} of {len(data)} bytes appended to {self.path}")
        finally:
            os.close(fd)


class UnavailableSink(Sink):
    """Stands in for a configured sink that could not be built: every notification routed to it
    is reported as a failed delivery with ``reason``, without retries (nothing would change)."""

    def __init__(self, name: str, min_severity: str, reason: str):
        super().__init__(name, min_severity)
        self.reason = reason

    def send(self, n: Notification) -> None:
        raise ConfigError(self.reason)


def _clip(error: str) -> str:
    return error if len(error) <= _MAX_ERROR else error[:_MAX_ERROR - 3] + "..."


def _deliver_one(n: Notification, sink: Sink, attempts: int, backoff: float, sleep) -> DeliveryResult:
    if isinstance(sink, UnavailableSink):
        return DeliveryResult(sink=sink.name, notification_kind=n.kind, alert_key=n.alert.key,
                              ok=False, attempts=0, error=_clip(sink.scrub(sink.reason)))
    error, tries = None, 0

    def send() -> None:
        nonlocal tries
        tries += 1
        sink.send(n)

    try:
        retry_call(send, attempts=max(1, attempts), backoff_seconds=backoff, retry_on=(Exception,), sleep=sleep)
    except Exception as exc:  # noqa: BLE001 - any failure of one sink is reported, not raised
        error = _clip(sink.scrub(f"{type(exc).__name__}: {exc}"))
    return DeliveryResult(sink=sink.name, notification_kind=n.kind, alert_key=n.alert.key,
                          ok=error is None, attempts=tries, error=error)


def deliver(notifications: list[Notification], sinks: list[Sink], attempts: int = 3, backoff: float = 0.5,
            sleep=time.sleep, budget_seconds: float | None = None,
            retries: list[tuple[Notification, str]] = ()) -> list[DeliveryResult]:
    """Send every notification to every sink that accepts it, and each ``retries`` pair (a
    notification and the name of the one sink that missed it earlier) to that sink; never raises
    for a failing sink. Each sink works in its own thread, so a sink that hangs delays no other;
    with ``budget_seconds``, what a sink has not delivered by then is reported as failed (its
    thread may still finish, and the next tick retries it), so a sensor tick stays within its
    time limit whatever the sinks do."""
    by_name: dict[str, int] = {}
    for i, sink in enumerate(sinks):
        by_name.setdefault(sink.name, i)
    # Per sink (by position: two sinks may share a name), its notifications in order, each with
    # its place in the overall order so the results come back as if sent one after another.
    work: dict[int, list[tuple[int, Notification]]] = {}
    order = 0
    for n, name in retries:
        if name in by_name:
            work.setdefault(by_name[name], []).append((order, n))
            order += 1
    for n in notifications:
        for i, sink in enumerate(sinks):
            if sink.accepts(n):
                work.setdefault(i, []).append((order, n))
                order += 1
    done: dict[int, list[tuple[int, DeliveryResult]]] = {i: [] for i in work}

    deadline = None if budget_seconds is None else time.monotonic() + budget_seconds

    def run(i: int) -> None:
        for seq, n in work[i]:
            if deadline is not None and time.monotonic() >= deadline:
                return   # what is left is reported as not delivered and retried next tick, never sent twice
            done[i].append((seq, _deliver_one(n, sinks[i], attempts, backoff, sleep)))

    threads = {i: threading.Thread(target=run, args=(i,), name=f"dbops-sink-{i}", daemon=True) for i in work}
    for t in threads.values():
        t.start()
    results: list[tuple[int, DeliveryResult]] = []
    for i, t in threads.items():
        t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        finished = list(done[i])   # a snapshot: a late thread may still append
        results += finished
        for seq, n in work[i][len(finished):]:
            results.append((seq, DeliveryResult(
                sink=sinks[i].name, notification_kind=n.kind, alert_key=n.alert.key, ok=False, attempts=0,
                error=f"not delivered within the tick's {budget_seconds:g} s (the sink is slow or hangs); retried next tick")))
    return [r for _, r in sorted(results, key=lambda sr: sr[0])]


def _env(environ, var: str, what: str) -> str:
    value = environ.get(var)
    if not value:
        raise ConfigError(f"environment variable {var} ({what}) is not set",
                          f"export {var} in the environment of the Dagster daemon (which runs the sensor) "
                          "and the code location, or fix that sink in the alerts section of dbops.yaml")
    return value


def _env_url(environ, var: str, what: str) -> str:
    """A URL from the environment, checked here because its text is a secret: no error quotes it."""
    url = _env(environ, var, what)
    try:
        parts = urlsplit(url)
        parts.port   # raises ValueError for a port that is not a number, with the URL in its text
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"environment variable {var} ({what}) does not hold an http(s) URL",
                          f"set {var} to the full URL, e.g. https://hooks.example.com/...")
    return url


def _tls_context(ca_file: str | None) -> ssl.SSLContext | None:
    if not ca_file:
        return None
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"ca_file {ca_file} cannot be used: {exc.strerror or type(exc).__name__}",
                          "point ca_file at a readable PEM file with the CA certificate") from None


def build_sink(spec: SinkSettings, environ=os.environ) -> Sink:
    """One sink from its validated settings, reading its secrets from ``environ``; raises
    ConfigError when a variable is missing."""
    common = {"min_severity": spec.min_severity, "timeout": spec.timeout}
    if isinstance(spec, SlackSinkSettings):
        return SlackSink(_env_url(environ, spec.url_env, "the Slack webhook URL"), **common)
    if isinstance(spec, WebhookSinkSettings):
        url = _env_url(environ, spec.url_env, "the webhook URL") if spec.url_env else spec.url
        headers = {h: _env(environ, var, f"header {h}") for h, var in spec.headers_env.items()}
        return WebhookSink(url, headers=headers, **common)
    if isinstance(spec, EmailSinkSettings):
        password = _env(environ, spec.password_env, "the SMTP password") if spec.password_env else None
        return EmailSink(spec.host, spec.port, spec.sender, spec.recipients, username=spec.username,
                         password=password, starttls=spec.starttls,
                         ssl_context=_tls_context(spec.ca_file),
                         **common)
    if isinstance(spec, PagerDutySinkSettings):
        return PagerDutySink(_env(environ, spec.routing_key_env, "the PagerDuty routing key"), url=spec.url, **common)
    if isinstance(spec, FileSinkSettings):
        return FileSink(spec.path, min_severity=spec.min_severity)
    raise ConfigError(f"unknown alert sink settings {type(spec).__name__}",
                      "use slack, webhook, email, pagerduty or file")


def build_sinks(specs: list[SinkSettings], environ=os.environ) -> list[Sink]:
    """Every configured sink, each built on its own: one that cannot be built (a variable unset, a
    CA file missing) becomes an UnavailableSink, reported by ``deliver``, and the others still work."""
    sinks: list[Sink] = []
    for i, spec in enumerate(specs or []):
        try:
            sinks.append(build_sink(spec, environ))
        except Exception as exc:  # noqa: BLE001 - one bad sink must not stop the others or the tick
            # any other exception's text may quote a secret just read from the environment
            reason = (f"{exc.message} -> {exc.hint}" if isinstance(exc, ConfigError)
                      else f"{type(exc).__name__} (details withheld: they may quote a secret)")
            sinks.append(UnavailableSink(f"{spec.kind} (alerts.sinks[{i}])", spec.min_severity,
                                         f"cannot be built: {reason}"))
    # A sink's name is its identity for retries kept in the sensor's cursor: two sinks that
    # describe themselves alike (two PagerDuty services) get their place in the list added.
    names = [s.name for s in sinks]
    for i, sink in enumerate(sinks):
        if names.count(sink.name) > 1:
            sink.name = f"{sink.name} (alerts.sinks[{i}])"
    return sinks
