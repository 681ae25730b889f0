"""Real local receivers for the alert sinks: an HTTP server (webhook / Slack / PagerDuty-like
answers) and an SMTP server with STARTTLS and AUTH, both on 127.0.0.1 and a free port.

Fixtures ``http_receiver`` and ``smtp_receiver`` are defined here; make them available to a
test module with ``from dbops_pipelines_tests.receivers import http_receiver, smtp_receiver``
(in conftest.py or in the module itself).
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import ipaddress
import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SMTP_TEST_USER = "alerts@dbops.test"
SMTP_TEST_PASSWORD = "smtp-s3cret-Pw-0451"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port_url(path: str = "/hook") -> str:
    """A URL nobody listens on (connection refused), to simulate a sink host that is down."""
    return f"http://127.0.0.1:{free_port()}{path}"


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "the condition",
             interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; return that, or fail after ``timeout``
    naming ``what`` was awaited. The one polling helper of the tests."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# --- HTTP ------------------------------------------------------------------------------------

@dataclass
class HttpRequest:
    method: str
    path: str
    headers: dict[str, str]
    raw: bytes
    body: Any                 # parsed JSON, or None when the body is not JSON
    status: int               # what the receiver answered


class HttpReceiver:
    """Records every request. Answers by path: ``/slack*`` -> 200 "ok", ``/pagerduty*`` -> 202
    JSON like PagerDuty's Events API, anything else -> 200 JSON. ``fail_next(n, path_prefix=...)``
    makes the next ``n`` matching requests answer 500 (echoing path and body, as some servers do);
    ``stop()`` closes the port."""

    def __init__(self):
        self._lock = threading.Lock()
        self._requests: list[HttpRequest] = []
        self._failures: dict[str, tuple[int, int]] = {}   # path prefix -> (remaining, status)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                status, ctype, answer = receiver._answer(self.path, raw, body)
                with receiver._lock:
                    receiver._requests.append(HttpRequest("POST", self.path, dict(self.headers), raw, body, status))
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):  # keep test output quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def _answer(self, path: str, raw: bytes, body: Any) -> tuple[int, str, bytes]:
        with self._lock:
            for prefix, (remaining, status) in self._failures.items():
                if remaining > 0 and path.startswith(prefix):
                    self._failures[prefix] = (remaining - 1, status)
                    # like many real servers, echo what was asked: a sink must not leak it in errors
                    return status, "text/plain", b"simulated failure for POST " + path.encode() + b": " + raw[:200]
        if path.startswith("/slack"):
            return 200, "text/plain", b"ok"
        if path.startswith("/pagerduty"):
            dedup = body.get("dedup_key") if isinstance(body, dict) else None
            return 202, "application/json", json.dumps(
                {"status": "success", "message": "Event processed", "dedup_key": dedup}).encode()
        return 200, "application/json", b'{"ok": true}'

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def fail_next(self, n: int, status: int = 500, path_prefix: str = "/") -> None:
        """Answer ``status`` to the next ``n`` requests whose path starts with ``path_prefix``."""
        with self._lock:
            self._failures[path_prefix] = (n, status)

    @property
    def requests(self) -> list[HttpRequest]:
        with self._lock:
            return list(self._requests)

    def received(self, path_prefix: str = "/", ok_only: bool = True) -> list[HttpRequest]:
        return [r for r in self.requests if r.path.startswith(path_prefix) and (r.status < 300 or not ok_only)]

    def wait_for(self, predicate: Callable[[list[HttpRequest]], Any], timeout: float = 5.0) -> Any:
        return wait_for(lambda: predicate(self.requests), timeout)

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._thread = None


@pytest.fixture
def http_receiver():
    receiver = HttpReceiver()
    yield receiver
    receiver.stop()


# --- SMTP ------------------------------------------------------------------------------------

def make_self_signed_cert(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed CA-style certificate for ``host`` (IP and localhost SANs); returns (cert, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dbops test SMTP")])
    now = dt.datetime.now(dt.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=False,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    tls: bool                 # STARTTLS was in effect
    login: str | None         # the authenticated user


@dataclass
class SmtpReceiver:
    host: str
    port: int
    cert_path: Path
    username: str = SMTP_TEST_USER
    password: str = SMTP_TEST_PASSWORD
    messages: list[ReceivedMail] = field(default_factory=list)
    auth_attempts: list[tuple[str, bool]] = field(default_factory=list)   # (login, success)
    controller: Controller | None = None

    def client_ssl_context(self) -> ssl.SSLContext:
        """What a client must use to trust this server's self-signed certificate."""
        return ssl.create_default_context(cafile=str(self.cert_path))

    def wait_for(self, predicate: Callable[[list[ReceivedMail]], Any], timeout: float = 5.0) -> Any:
        return wait_for(lambda: predicate(list(self.messages)), timeout)

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    # aiosmtpd hooks ---------------------------------------------------------------------------
    def authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode()
        ok = login == self.username and auth_data.password.decode() == self.password
        self.auth_attempts.append((login, ok))
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        self.messages.append(ReceivedMail(envelope.mail_from, list(envelope.rcpt_tos), message,
                                          session.ssl is not None, login))
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_receiver(tmp_path):
    cert_path, key_path = make_self_signed_cert(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert_path, key_path)
    receiver = SmtpReceiver("127.0.0.1", free_port(), cert_path)
    receiver.controller = Controller(
        receiver, hostname=receiver.host, port=receiver.port, tls_context=tls, require_starttls=True,
        authenticator=receiver.authenticate, auth_required=True, auth_require_tls=True,
    )
    receiver.controller.start()
    yield receiver
    receiver.stop()
