"""Anonymization of rows that must be kept (invoices, audit): configured columns become null, a
fixed value, or a keyed token. The token is HMAC-SHA-256 of the value under a secret from the
environment (never the file), so one person's e-mail becomes the same token in every table and
in every run, and joins on it still work; without the secret nobody can test a guess against it.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from dbops_pipelines.config import GdprSettings
from dbops_pipelines.errors import ConfigError

TOKEN_PREFIX = "anon_"
TOKEN_HEX = 24        # 96 bits: no two people's values collide in practice; fits catalog.HASH_TOKEN_CHARS
MIN_SECRET_BYTES = 16


def secret_from_env(var: str, where_hint: str) -> bytes:
    """The HMAC secret from $var, at least MIN_SECRET_BYTES long; ``where_hint`` tells where to
    export it (cleanup and masking run in different places)."""
    value = os.environ.get(var, "")
    if len(value.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(f"the anonymization secret ${var} is "
                          + ("not set" if not value else f"shorter than {MIN_SECRET_BYTES} bytes"), where_hint)
    return value.encode()


def hash_secret(settings: GdprSettings) -> bytes | None:
    """The HMAC secret when a configured column needs it (None otherwise); read once per run."""
    if not any(action == "hash" for t in settings.tables.values() for action in t.columns.values()):
        return None
    return secret_from_env(settings.hash_key_env,
                           f"export {settings.hash_key_env} (e.g. the output of `dbops keygen`) where cleanup runs; "
                           "keep it as safe as the backup key: with it, a guessed value can be checked against a token")


def token(secret: bytes, value) -> str | None:
    if value is None:
        return None
    digest = hmac.new(secret, str(value).encode(), hashlib.sha256).hexdigest()
    return TOKEN_PREFIX + digest[:TOKEN_HEX]


def new_value(action: str | None, value, secret: bytes | None):
    """What one column of a kept row becomes."""
    if action is None:
        return None
    if action == "hash":
        return token(secret, value)
    return action[len("fixed:"):]
