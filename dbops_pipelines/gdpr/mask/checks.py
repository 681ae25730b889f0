"""The configuration checks: every configured table and column exists and can take its masked
value, every foreign key on a masked column still holds (against either shape), and what only the
destination can say (ownership, rules, fixed values)."""

from __future__ import annotations

from collections.abc import Iterable

import psycopg
from psycopg import sql

from dbops_pipelines.backup.snapshot import NAMING_HINT, near_misses
from dbops_pipelines.errors import ConfigError
from dbops_pipelines.gdpr.catalog import HASH_TOKEN_CHARS, _fits
from dbops_pipelines.gdpr.mask.rules import ColumnRule, MaskingFailed, TableRules
from dbops_pipelines.gdpr.mask.shape import ForeignKey, Shape

def _hash_fits(kind: str) -> bool:
    return kind == "text" or kind.startswith(("character varying", "character(")) and _fits(kind, HASH_TOKEN_CHARS)


def check(shape: Shape, rules: dict[str, TableRules], source: str, foreign_keys: Iterable[ForeignKey] | None = None) -> None:
    """Every configured table and column exists in ``shape`` and can take its masked value, and
    every foreign key on a masked column still holds once masked. Raises ConfigError."""
    existing = sorted(shape.tables)
    for table, table_rules in rules.items():
        columns = shape.tables.get(table)
        if columns is None:
            raise ConfigError(f"{table_rules.where}: table {table} does not exist in {source}"
                              + near_misses([table], existing), f"name an existing table as {NAMING_HINT}")
        for column, rule in table_rules.columns.items():
            info = columns.get(column)
            if info is None:
                hits = [repr(c) for c in sorted(columns) if c.casefold() == column.casefold()]
                raise ConfigError(f"{rule.where}: no column {column!r} in {table}"
                                  + (f" (did you mean {', '.join(hits)}?)" if hits else ""),
                                  "name existing columns exactly (case-sensitive)")
            if info.generated:
                raise ConfigError(f"{rule.where}: {table}.{column} is a generated or identity column and cannot be "
                                  "overwritten", "mask the columns it is computed from instead")
            if rule.action == "hash" and not _hash_fits(info.type):
                raise ConfigError(f"{rule.where}: a hash token is text of {HASH_TOKEN_CHARS} characters and the column "
                                  f"is {info.type}", "use null or \"fixed:<value>\" for this column")
            if rule.action is None and info.not_null:
                raise ConfigError(f"{rule.where}: the column is NOT NULL", "use hash or \"fixed:<value>\" for it")
    for fk in shape.foreign_keys if foreign_keys is None else foreign_keys:
        _check_foreign_key(fk, rules)


def _rule(rules: dict[str, TableRules], table: str, column: str) -> ColumnRule | None:
    entry = rules.get(table)
    return entry.columns.get(column) if entry else None


def touches(fk: ForeignKey, rules: dict[str, TableRules]) -> bool:
    return any(_rule(rules, fk.child, c) for c in fk.child_columns) or \
        any(_rule(rules, fk.parent, c) for c in fk.parent_columns)


def _check_foreign_key(fk: ForeignKey, rules: dict[str, TableRules]) -> None:
    """A key on masked columns holds afterwards when each masked pair is hashed on both sides (the
    same value, the same token) or the referencing side is set to NULL (with MATCH FULL: all of it)."""
    nulled = [_rule(rules, fk.child, c) is not None and _rule(rules, fk.child, c).action is None for c in fk.child_columns]
    if fk.match_full and any(nulled) and not all(nulled):
        raise ConfigError(f"foreign key {fk.name!r} of "
                          f"{fk.child} is MATCH FULL: nulling only some of ({', '.join(fk.child_columns)}) breaks it",
                          "null all of its columns, or hash them and the columns they reference")
    for c, p, is_null in zip(fk.child_columns, fk.parent_columns, nulled):
        child, parent = _rule(rules, fk.child, c), _rule(rules, fk.parent, p)
        if (child is None and parent is None) or is_null or (child and parent and child.action == parent.action == "hash"):
            continue
        pair = f"{fk.child}.{c} references {fk.parent}.{p} (foreign key {fk.name!r})"
        if child is None:
            raise ConfigError(f"{pair}, which {parent.where} masks, but {fk.child}.{c} is not masked, so the key "
                              "would no longer match",
                              f"mask {fk.child}.{c} with hash too (gdpr.mask), or set it to null")
        if parent is None:
            raise ConfigError(f"{pair}: {child.where} masks it, but {fk.parent}.{p} is not masked, so the key "
                              "would no longer match", f"mask {fk.parent}.{p} with hash too (gdpr.mask)")
        raise ConfigError(f"{pair}: both sides are masked, but not both with hash ({child.where}: "
                          f"{child.action or 'null'}, {parent.where}: {parent.action or 'null'})",
                          "hash both sides (the same value becomes the same token), or null the referencing side")


def check_in_database(conn: psycopg.Connection, shape: Shape, rules: dict[str, TableRules],
                      fks: list[ForeignKey]) -> None:
    """What only the destination can say: who owns the tables, their rules, fixed values' casts,
    fixed values on unique columns."""
    altered = sorted(set(rules) | {fk.child for fk in fks})
    for table in altered:
        (owned, has_rule) = conn.execute(
            "SELECT pg_has_role(c.relowner, 'USAGE'), EXISTS (SELECT 1 FROM pg_rewrite r WHERE r.ev_class = c.oid "
            "AND r.ev_type = '2' AND r.rulename <> '_RETURN') FROM pg_class c WHERE c.oid = %s",
            (shape.oids[table],)).fetchone()
        if not owned:
            raise MaskingFailed(f"masking alters {table} (pauses its triggers, drops and re-adds foreign keys), and "
                                "the destination role does not own it",
                                "restore and mask as the same role: restores run with --no-owner, so that role owns "
                                "what it restored")
        if has_rule and table in rules:
            raise MaskingFailed(f"{table} has an ON UPDATE rule: masking cannot vouch for what its UPDATE "
                                "would do", "drop the rule in the destination, or leave the table out of gdpr.mask")
    for table, table_rules in rules.items():
        unique = {r[0] for r in conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
            "WHERE i.indrelid = %s AND i.indisunique AND i.indnkeyatts = 1 AND i.indpred IS NULL",
            (shape.oids[table],)).fetchall()}
        for column, rule in table_rules.columns.items():
            if rule.action is None or not rule.action.startswith("fixed:"):
                continue
            value, kind = rule.action[len("fixed:"):], shape.tables[table][column].type
            if column in unique:
                raise ConfigError(f"{rule.where}: {table}.{column} is unique, and a fixed value would repeat in every row",
                                  "use hash for it (distinct values stay distinct)")
            try:
                with conn.transaction():
                    conn.execute(sql.SQL("SELECT {}::{}").format(sql.Literal(value), sql.SQL(kind)))
            except psycopg.Error:
                raise ConfigError(f"{rule.where}: {value!r} is not a value of type {kind}",
                                  "give a value of the column's type") from None
