"""Masked copies for staging: after a restore, every row of the configured tables has its
personal columns overwritten (null, a fixed value, or the keyed token of anonymize.py), so the
same value becomes the same token in every table and joins and foreign keys on it still work.

What is masked: ``gdpr.mask`` (table -> {column: action}) merged over the columns of the tables
``gdpr.tables`` lists with action anonymize (``mask`` wins). Every name, type and foreign key is
checked before anything changes: against the backup's own schema record before the restore
(prepare_masking), and against the destination's catalog before masking (mask_database).

How: one transaction. The foreign keys that involve a masked column are dropped (their exact
definitions kept), user triggers on the masked tables are paused (an audit trigger must not copy
the old values elsewhere), forced row security is lifted for the owner; the distinct values of the
hashed columns are read, their tokens computed here (the secret never goes into SQL text, where
it could reach the server log or pg_stat_statements) and COPYed into a temporary map; then one
``UPDATE ... FROM`` per table, a check that no value is left unmasked, the keys re-added (they
validate again: both sides carry the same tokens), triggers and row security as they were,
materialized views over the masked tables refreshed, statistics replaced. Any failure rolls all
of it back. Afterwards VACUUM FULL rewrites the masked tables, so the old row versions (with the
original values) are gone from their files and indexes.

A value that already is a token (anon_ + 24 hex, e.g. a row cleanup anonymized in production)
stays as it is, so masking twice changes nothing and cleanup's tokens stay what they were.
No Dagster here: the CLI (cmd_restore) calls it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from dbops_pipelines.backup.manifest import BackupManifest
from dbops_pipelines.backup.snapshot import canonical_table
from dbops_pipelines.config import FleetConfig, GdprSettings
from dbops_pipelines.errors import ConfigError, DbopsError
from dbops_pipelines.gdpr.mask.apply import MaskResult, mask_database
from dbops_pipelines.gdpr.mask.checks import check
from dbops_pipelines.gdpr.mask.rules import ColumnRule, MaskingFailed, TableRules, mask_rules, mask_secret, tokens
from dbops_pipelines.gdpr.mask.shape import _parse_foreign_key, _split_description  # noqa: F401 - the tests use them
from dbops_pipelines.gdpr.mask.shape import shape_from_fingerprint
from dbops_pipelines.pgtools import connect
from dbops_pipelines.redact import redact

__all__ = ["ColumnRule", "MaskJob", "MaskResult", "MaskingFailed", "TableRules", "mask_database", "mask_restored",
           "mask_rules", "mask_secret", "prepare_masking", "tokens"]

APPLICATION_NAME = "dbops_mask"

UNMASKED_HINT = ("do not hand the destination over: drop it (DROP DATABASE) or mask it, e.g. restore again with "
                 "--anonymize into a fresh database once the cause is fixed; until then keep staging users out of it")


# --- restore --anonymize -------------------------------------------------------------------------

@dataclass(frozen=True)
class MaskJob:
    """What `restore --anonymize` masks, prepared (and checked) before the restore starts."""
    target: str
    settings: GdprSettings
    rules: dict[str, TableRules]          # only the tables the copy will hold
    secret: bytes | None
    tables: frozenset[str] | None         # the tables the copy will hold; None: all of the backup's


def prepare_masking(cfg: FleetConfig, manifest: BackupManifest, selected: Iterable[str] = ()) -> MaskJob:
    """Everything that can fail before a restore: the target's gdpr settings, something to mask,
    the secret, and the configuration against the schema the backup recorded."""
    target = manifest.target
    if target not in cfg.targets:
        raise ConfigError(f"backup {manifest.backup_id} is of target {target!r}, which is not in the config: "
                          "--anonymize masks what its targets.<target>.gdpr section lists",
                          f"add target {target!r} with its gdpr section (docs/gdpr.md#masked-copies-for-staging)")
    settings = cfg.targets[target].gdpr
    if settings is None:
        raise ConfigError(f"target {target!r} has no gdpr section: --anonymize would not know what to mask",
                          f"add targets.{target}.gdpr.mask (table: {{column: null | hash | \"fixed:<value>\"}}, "
                          "docs/gdpr.md#masked-copies-for-staging)")
    rules = mask_rules(settings)
    if not rules:
        raise ConfigError(f"targets.{target}.gdpr lists nothing to mask",
                          f"add targets.{target}.gdpr.mask (table: {{column: null | hash | \"fixed:<value>\"}})")
    secret = mask_secret(settings, rules)
    selected = [canonical_table(t) for t in selected]
    if selected:
        in_copy = frozenset(selected)
    elif manifest.kind == "tables":
        in_copy = frozenset(canonical_table(t) for t in manifest.selected_tables)
    else:
        in_copy = None
    shape = shape_from_fingerprint(manifest.schema_fingerprint)
    if shape is not None:
        # pg_restore --table restores no constraints; otherwise a key between two restored tables comes along.
        fks = [] if selected else [fk for fk in shape.foreign_keys
                                   if in_copy is None or (fk.child in in_copy and fk.parent in in_copy)]
        check(shape, rules, f"backup {manifest.backup_id}", fks)
    if in_copy is not None:
        rules = {t: r for t, r in rules.items() if t in in_copy}
    return MaskJob(target, settings, rules, secret, in_copy)


def mask_restored(job: MaskJob, dsn: str, backup_id: str, log: Callable[[str], None] = lambda line: None,
                  warn: Callable[[str], None] = lambda line: None) -> MaskResult:
    """Mask a destination just restored. Any failure says loudly that it holds unmasked data."""
    def unmasked(why: str) -> str:
        return (f"backup {backup_id} was restored into {redact(dsn)}, but {why}. The destination now holds UNMASKED "
                "production data")
    if not job.rules:
        return MaskResult(notes=["none of the configured tables is in the restored set: nothing to mask"])
    try:
        with connect(dsn, "the restore destination", retries=1, error=MaskingFailed,
                     application_name=APPLICATION_NAME, autocommit=True) as conn:
            return mask_database(conn, job.settings, tables=job.tables, secret=job.secret, log=log)
    except DbopsError as exc:
        why = exc.message if isinstance(exc, MaskingFailed) else f"masking could not run: {exc.message}"
        raise MaskingFailed(unmasked(why), UNMASKED_HINT + (f". The cause: {exc.hint}" if exc.hint else "")) from None
    except KeyboardInterrupt:
        warn(unmasked("masking was interrupted (and rolled back)") + ": " + UNMASKED_HINT)
        raise
    except Exception as exc:  # noqa: BLE001 - its text could quote a value: the type only
        raise MaskingFailed(unmasked(f"masking failed with an unexpected {type(exc).__name__} (a bug in dbops: "
                                     "please report it)"), UNMASKED_HINT) from None
