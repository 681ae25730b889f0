"""The `alerts:` block of dbops.yaml: alert sinks as a typed union discriminated on ``kind``.

Each kind rejects unknown keys, so a misspelt ``pasword_env`` is an error instead of an e-mail
sink that silently logs in without a password. Secrets never live in the file: a sink names
the environment variables that hold them (``*_env``) and dbops.alerts.sinks reads them when it
sends. No validation message here echoes a value: a secret pasted into the wrong key must not
be copied into an error, a log line or the Dagster UI.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, Union
from urllib.parse import parse_qsl, urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
Severity = Literal["info", "warning", "critical"]
# Query parameters that usually carry a credential in webhook URLs (?token=..., ?sig=...).
_SECRET_PARAM = re.compile(r"token|key|secret|sig|pass|auth|code|cred", re.I)
# A literal secret key someone may write, and where its value belongs instead.
_LITERAL_SECRETS = {"password": "password_env", "routing_key": "routing_key_env", "headers": "headers_env",
                    "token": "an *_env key", "secret": "an *_env key", "api_key": "an *_env key"}


def _env_name(v: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", v):
        # never echo v: it may be the secret itself, pasted where its variable's name belongs
        raise ValueError("must be the NAME of an environment variable (letters, digits, _), not its value")
    return v


EnvName = Annotated[str, AfterValidator(_env_name)]


def _plain_url(v: str, instead: str) -> str:
    """A URL that may be written in the file: http(s), no user info, no credential-like query."""
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("url must be an http:// or https:// URL")
    if parts.username or parts.password:
        raise ValueError(f"url must not carry credentials: {instead}")
    if any(_SECRET_PARAM.search(k) for k, _ in parse_qsl(parts.query, keep_blank_values=True)):
        raise ValueError(f"url has a query parameter that looks like a credential: {instead}")
    return v


class _SinkBase(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    min_severity: Severity = "warning"     # this sink gets alerts at or above it, and their "resolved"
    timeout: float = Field(10, gt=0, le=300)

    @model_validator(mode="before")
    @classmethod
    def _no_literal_secret(cls, raw):
        if isinstance(raw, dict):
            for key, instead in _LITERAL_SECRETS.items():
                if key in raw:
                    raise ValueError(f"`{key}` would put a secret in dbops.yaml: name the environment variable "
                                     f"that holds it in {instead}")
        return raw


class SlackSinkSettings(_SinkBase):
    kind: Literal["slack"]
    url_env: EnvName       # a Slack webhook URL is itself the secret: only from the environment

    @model_validator(mode="before")
    @classmethod
    def _no_literal_url(cls, raw):
        if isinstance(raw, dict) and "url" in raw:
            raise ValueError("`url` would put the Slack webhook URL (a secret) in dbops.yaml: export it and "
                             "name the variable in url_env")
        return raw


class WebhookSinkSettings(_SinkBase):
    kind: Literal["webhook"]
    url: str | None = None       # a plain endpoint; one that embeds a token goes in url_env
    url_env: EnvName | None = None
    headers_env: dict[str, EnvName] = {}   # header name -> variable holding its value (Authorization...)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else _plain_url(v, "put the whole URL in the environment and name it in url_env")

    @field_validator("headers_env")
    @classmethod
    def _header_names(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", name):
                raise ValueError("header names are letters, digits and -")
        return v

    @model_validator(mode="after")
    def _one_url(self):
        if (self.url is None) == (self.url_env is None):
            raise ValueError("set exactly one of url (a plain endpoint) or url_env (a variable holding the URL)")
        return self


class EmailSinkSettings(_SinkBase):
    kind: Literal["email"]
    host: str = Field(min_length=1)
    port: int = Field(587, ge=1, le=65535)
    starttls: bool = True
    username: str | None = None
    password_env: EnvName | None = None
    sender: str = Field(min_length=3)
    recipients: list[str] = Field(min_length=1)
    ca_file: str | None = None   # trust a private CA (or a test server's own certificate)

    @field_validator("recipients", mode="before")
    @classmethod
    def _one_recipient(cls, v):
        return [v] if isinstance(v, str) else v   # `recipients: a@b` has always been accepted

    @model_validator(mode="after")
    def _login_pair(self):
        if self.password_env and not self.username:
            raise ValueError("password_env without username: the password would never be used; add username")
        return self


class PagerDutySinkSettings(_SinkBase):
    kind: Literal["pagerduty"]
    routing_key_env: EnvName
    url: str = PAGERDUTY_EVENTS_URL   # Events API v2 endpoint; other values are for tests and proxies

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _plain_url(v, "the routing key comes from routing_key_env, never from the URL")


class FileSinkSettings(_SinkBase):
    """A local file, one JSON line appended per notification: alerts an operator can read (`tail -f`)
    without any service. A relative ``path`` is relative to the folder of dbops.yaml."""

    kind: Literal["file"]
    path: str = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _no_timeout(cls, raw):
        if isinstance(raw, dict) and "timeout" in raw:
            raise ValueError("`timeout` does not apply to a file sink: remove it")
        return raw

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if "\0" in v or not v.strip():
            raise ValueError("path must name a file, e.g. alerts.jsonl or /var/log/dbops/alerts.jsonl")
        if v.endswith("/"):
            raise ValueError("path names a folder: name the file in it, e.g. alerts.jsonl")
        if v.startswith("~"):
            raise ValueError("~ is not expanded (the daemon may run as another user): write the absolute path")
        return v

    def resolved(self, base_dir: Path) -> "FileSinkSettings":
        """These settings with a relative ``path`` made absolute against ``base_dir``."""
        path = Path(self.path)
        return self if path.is_absolute() else self.model_copy(update={"path": str((base_dir / path).resolve())})


SinkSettings = Annotated[
    Union[SlackSinkSettings, WebhookSinkSettings, EmailSinkSettings, PagerDutySinkSettings, FileSinkSettings],
    Field(discriminator="kind"),
]


class AlertSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    ui_base_url: str = "http://127.0.0.1:3000"   # links in messages point at runs in this UI
    reminder_minutes: int = Field(240, ge=1)      # an open alert is repeated this often, not every tick
    sensor_interval_seconds: int = Field(30, ge=5)
    sinks: list[SinkSettings] = []

    def resolve_paths(self, base_dir: Path) -> None:
        """Make the relative paths of file sinks absolute against ``base_dir`` (the folder of
        dbops.yaml), as storage.url's relative file:// paths are."""
        self.sinks = [s.resolved(base_dir) if isinstance(s, FileSinkSettings) else s for s in self.sinks]
