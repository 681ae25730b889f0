"""What to mask: the rules (gdpr.tables' anonymized columns, then gdpr.mask over them), the
HMAC secret, and the tokens, which are anonymize.py's."""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from dbops_pipelines.backup.snapshot import canonical_table
from dbops_pipelines.config import GdprSettings
from dbops_pipelines.errors import ConfigError, DbopsError
from dbops_pipelines.gdpr.anonymize import TOKEN_HEX, TOKEN_PREFIX, secret_from_env

TOKEN_RE = re.compile(re.escape(TOKEN_PREFIX) + "[0-9a-f]{%d}" % TOKEN_HEX)


class MaskingFailed(DbopsError):
    """Masking did not complete; it was rolled back, so nothing of it was applied."""


@dataclass(frozen=True)
class ColumnRule:
    action: str | None               # None (set NULL) | "hash" | "fixed:<value>"
    where: str                       # the config key it came from, for messages


@dataclass
class TableRules:
    where: str
    columns: dict[str, ColumnRule] = field(default_factory=dict)


def mask_rules(settings: GdprSettings) -> dict[str, TableRules]:
    """Qualified table -> its columns to mask: gdpr.tables' anonymized columns, then gdpr.mask over them."""
    rules: dict[str, TableRules] = {}
    for name, table in settings.tables.items():
        if table.action == "anonymize":
            entry = rules.setdefault(canonical_table(name), TableRules(f"gdpr.tables.{name}"))
            for column, action in table.columns.items():
                entry.columns[column] = ColumnRule(action, f"gdpr.tables.{name}.columns.{column}")
    spelled: dict[str, str] = {}
    for name, columns in settings.mask.items():
        qname = canonical_table(name)
        if qname in spelled:
            raise ConfigError(f"gdpr.mask names {qname} twice ({spelled[qname]!r} and {name!r})", "keep one entry")
        spelled[qname] = name
        entry = rules.setdefault(qname, TableRules(f"gdpr.mask.{name}"))
        entry.where = f"gdpr.mask.{name}"
        for column, action in columns.items():
            entry.columns[column] = ColumnRule(action, f"gdpr.mask.{name}.{column}")
    return rules


def mask_secret(settings: GdprSettings, rules: dict[str, TableRules]) -> bytes | None:
    """The HMAC secret (anonymize.secret_from_env, as cleanup reads it) when a column is hashed; None otherwise."""
    if not any(r.action == "hash" for t in rules.values() for r in t.columns.values()):
        return None
    return secret_from_env(settings.hash_key_env,
                           f"export {settings.hash_key_env} where the restore runs: the same secret as GDPR cleanup's, "
                           "so masked copies carry the same tokens (`dbops keygen` makes one)")


def tokens(secret: bytes, values: Iterable[str]) -> list[str]:
    """anonymize.token for each value (the same HMAC-SHA-256, one-shot for speed); a value that
    already is a token stays itself."""
    digest, n = hmac.digest, TOKEN_HEX // 2
    return [v if v.startswith(TOKEN_PREFIX) and TOKEN_RE.fullmatch(v)
            else TOKEN_PREFIX + digest(secret, v.encode(), "sha256")[:n].hex()
            for v in values]
