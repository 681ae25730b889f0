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

import hmac
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from dbops_pipelines.backup.manifest import BackupManifest
from dbops_pipelines.backup.snapshot import NAMING_HINT, QUOTED_NAMES, canonical_table, near_misses, qualified
from dbops_pipelines.config import FleetConfig, GdprSettings
from dbops_pipelines.errors import ConfigError, DbopsError
from dbops_pipelines.gdpr.anonymize import MIN_SECRET_BYTES, TOKEN_HEX, TOKEN_PREFIX
from dbops_pipelines.gdpr.catalog import HASH_TOKEN_CHARS, USER_SCHEMAS, _fits
from dbops_pipelines.gdpr.cleanup import why_not
from dbops_pipelines.gdpr.plan import ident
from dbops_pipelines.pgtools import connect
from dbops_pipelines.redact import redact

APPLICATION_NAME = "dbops_mask"
TOKEN_RE = re.compile(re.escape(TOKEN_PREFIX) + "[0-9a-f]{%d}" % TOKEN_HEX)
MAP = sql.SQL("pg_temp.dbops_mask_map")
BATCH = 50_000                   # distinct values per fetch / COPY
UNMASKED_HINT = ("do not hand the destination over: drop it (DROP DATABASE) or mask it, e.g. restore again with "
                 "--anonymize into a fresh database once the cause is fixed; until then keep staging users out of it")


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


@dataclass
class MaskResult:
    tables: dict[str, int] = field(default_factory=dict)          # table -> rows masked
    columns: dict[str, list[str]] = field(default_factory=dict)   # table -> masked columns
    foreign_keys: list[str] = field(default_factory=list)         # re-added (and validated) after masking
    refreshed: list[str] = field(default_factory=list)            # materialized views refreshed
    distinct_values: int = 0                                      # values hashed
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(self.tables.values())

    def summary(self) -> str:
        ncols = sum(len(c) for c in self.columns.values())
        return f"masked {ncols} columns in {len(self.tables)} tables ({self.rows} rows)"


# --- what to mask --------------------------------------------------------------------------------

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
    """The HMAC secret (as anonymize.hash_secret reads it) when a column is hashed; None otherwise."""
    if not any(r.action == "hash" for t in rules.values() for r in t.columns.values()):
        return None
    value = os.environ.get(settings.hash_key_env, "")
    if len(value.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(f"the anonymization secret ${settings.hash_key_env} is "
                          + ("not set" if not value else f"shorter than {MIN_SECRET_BYTES} bytes"),
                          f"export {settings.hash_key_env} where the restore runs: the same secret as GDPR cleanup's, "
                          "so masked copies carry the same tokens (`dbops keygen` makes one)")
    return value.encode()


def tokens(secret: bytes, values: Iterable[str]) -> list[str]:
    """anonymize.token for each value (the same HMAC-SHA-256, one-shot for speed); a value that
    already is a token stays itself."""
    digest, n = hmac.digest, TOKEN_HEX // 2
    return [v if v.startswith(TOKEN_PREFIX) and TOKEN_RE.fullmatch(v)
            else TOKEN_PREFIX + digest(secret, v.encode(), "sha256")[:n].hex()
            for v in values]


# --- the schema the rules are checked against ----------------------------------------------------

@dataclass(frozen=True)
class _Column:
    type: str                        # format_type
    not_null: bool
    generated: bool = False          # GENERATED ... STORED or GENERATED ALWAYS AS IDENTITY


@dataclass(frozen=True)
class _ForeignKey:
    name: str                        # raw constraint name
    child: str
    child_columns: tuple[str, ...]
    parent: str
    parent_columns: tuple[str, ...]
    match_full: bool
    definition: str = ""             # pg_get_constraintdef (destination only)


@dataclass
class _Shape:
    tables: dict[str, dict[str, _Column]]
    foreign_keys: list[_ForeignKey]
    oids: dict[str, int] = field(default_factory=dict)


def _shape_from_database(conn: psycopg.Connection) -> _Shape:
    tables: dict[str, dict[str, _Column]] = {}
    oids: dict[str, int] = {}
    for oid, schema, table in conn.execute(
            f"SELECT c.oid, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE c.relkind IN ('r', 'p') AND {USER_SCHEMAS}").fetchall():
        tables[qualified(schema, table)] = {}
        oids[qualified(schema, table)] = oid
    for schema, table, column, kind, not_null, generated in conn.execute(f"""
            SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                   a.attgenerated <> '' OR a.attidentity = 'a'
              FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped AND {USER_SCHEMAS}""").fetchall():
        tables[qualified(schema, table)][column] = _Column(kind, not_null, generated)
    fks = [_ForeignKey(name, qualified(cs, ct), tuple(ccols), qualified(ps, pt), tuple(pcols), match == "f", definition)
           for name, cs, ct, ps, pt, match, ccols, pcols, definition in conn.execute(f"""
            SELECT con.conname, n.nspname, c.relname, pn.nspname, p.relname, con.confmatchtype,
                   ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(attnum, ord)
                           JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum ORDER BY k.ord),
                   ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(attnum, ord)
                           JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum ORDER BY k.ord),
                   pg_get_constraintdef(con.oid)
              FROM pg_constraint con
              JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
              JOIN pg_class p ON p.oid = con.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace
             WHERE con.contype = 'f' AND con.conparentid = 0 AND {USER_SCHEMAS}
             ORDER BY n.nspname, c.relname, con.conname""").fetchall()]
    return _Shape(tables, fks, oids)


_PART = r'"(?:[^"]|"")+"|[a-z_][a-z0-9_]*'          # a name part as snapshot.qualified writes it
_MEMBER_KEY = re.compile(rf"({_PART})\.({_PART})\.({_PART})")
_TOKEN = re.compile(r'\s*(?:("(?:[^"]|"")*")|([A-Za-z_][A-Za-z0-9_$]*)|([(),.]))')


def _unquote(part: str) -> str:
    return part[1:-1].replace('""', '"') if part.startswith('"') else part


def _split_description(desc: str) -> tuple[str, bool]:
    """A fingerprint column description "<type>[ not null][ default <expr>]" -> (type, not null);
    quoted type names may hold anything, so the split is found outside double quotes."""
    quoted = False
    for i, ch in enumerate(desc):
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == " " and desc.startswith((" not null", " default "), i):
            return desc[:i], desc.startswith(" not null", i)
    return desc, False


def _parse_foreign_key(definition: str) -> tuple[tuple[str, ...], tuple[str, str], tuple[str, ...], bool] | None:
    """FOREIGN KEY (a, "B") REFERENCES [schema.]table(x, "Y") ... -> its parts, or None. Names are
    single tokens (quoted ones may hold parentheses and commas); an unqualified table is public's
    (the fingerprint was read with the default search_path)."""
    toks: list[tuple[str, str]] = []
    pos, closed = 0, 0
    while closed < 2 and (m := _TOKEN.match(definition, pos)) and m.end() > pos:
        pos = m.end()
        toks.append(("name", _unquote(m[1])) if m[1] else ("word", m[2]) if m[2] else ("punct", m[3]))
        closed += toks[-1] == ("punct", ")")
    i = 0

    def expect(tok: tuple[str, str]) -> None:
        nonlocal i
        if toks[i] != tok:
            raise ValueError(tok)
        i += 1

    def name() -> str:
        nonlocal i
        kind, text = toks[i]
        if kind == "punct":
            raise ValueError(text)
        i += 1
        return text

    def names() -> tuple[str, ...]:
        nonlocal i
        out = [name()]
        while toks[i] == ("punct", ","):
            i += 1
            out.append(name())
        return tuple(out)

    try:
        expect(("word", "FOREIGN"))
        expect(("word", "KEY"))
        expect(("punct", "("))
        child = names()
        expect(("punct", ")"))
        expect(("word", "REFERENCES"))
        first = name()
        if toks[i] == ("punct", "."):
            i += 1
            parent = (first, name())
        else:
            parent = ("public", first)
        expect(("punct", "("))
        parent_columns = names()
        expect(("punct", ")"))
    except (ValueError, IndexError):
        return None
    if len(child) != len(parent_columns):
        return None
    return child, parent, parent_columns, "MATCH FULL" in definition[pos:]


def _shape_from_fingerprint(fingerprint: dict | None) -> _Shape | None:
    """The schema as the backup recorded it (manifest.schema_fingerprint), or None for a record
    too old to name objects unambiguously. Foreign keys are read from their definitions."""
    if not fingerprint or fingerprint.get("names") != QUOTED_NAMES:
        return None
    tables: dict[str, dict[str, _Column]] = {name: {} for name, desc in fingerprint.get("tables", {}).items()
                                              if desc.split(" ")[0] in ("r", "p")}
    for key, desc in fingerprint.get("columns", {}).items():
        m = _MEMBER_KEY.fullmatch(key)
        if m and f"{m[1]}.{m[2]}" in tables:
            kind, not_null = _split_description(desc)
            tables[f"{m[1]}.{m[2]}"][_unquote(m[3])] = _Column(kind, not_null)
    fks = []
    for key, definition in fingerprint.get("constraints", {}).items():
        m = _MEMBER_KEY.fullmatch(key)
        parsed = _parse_foreign_key(definition) if m and definition.startswith("FOREIGN KEY") else None
        if parsed:
            child_columns, parent, parent_columns, match_full = parsed
            fks.append(_ForeignKey(_unquote(m[3]), f"{m[1]}.{m[2]}", child_columns, qualified(*parent),
                                   parent_columns, match_full))
    return _Shape(tables, fks)


# --- checks --------------------------------------------------------------------------------------

def _hash_fits(kind: str) -> bool:
    return kind == "text" or kind.startswith(("character varying", "character(")) and _fits(kind, HASH_TOKEN_CHARS)


def _check(shape: _Shape, rules: dict[str, TableRules], source: str, foreign_keys: Iterable[_ForeignKey] | None = None) -> None:
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


def _touches(fk: _ForeignKey, rules: dict[str, TableRules]) -> bool:
    return any(_rule(rules, fk.child, c) for c in fk.child_columns) or \
        any(_rule(rules, fk.parent, c) for c in fk.parent_columns)


def _check_foreign_key(fk: _ForeignKey, rules: dict[str, TableRules]) -> None:
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


def _check_in_database(conn: psycopg.Connection, shape: _Shape, rules: dict[str, TableRules],
                       fks: list[_ForeignKey]) -> None:
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


# --- masking -------------------------------------------------------------------------------------

def _key(column: str, alias: str = "") -> sql.Composed:
    """A row's map key for a hashed column: '' for NULL (maps to NULL), else 'v' and the value as
    text exactly as the client reads it (concat keeps char(n) padding: the same string cleanup hashes)."""
    col = sql.Identifier(alias, column) if alias else sql.Identifier(column)
    return sql.SQL("CASE WHEN {c} IS NULL THEN '' ELSE 'v' || concat({c}) END").format(c=col)


def _build_map(conn: psycopg.Connection, hashed: list[tuple[str, str]], secret: bytes,
               log: Callable[[str], None]) -> int:
    """Every distinct value of the hashed columns -> its token, in a temporary table dropped at commit."""
    conn.execute(sql.SQL("CREATE TEMPORARY TABLE {} (key text NOT NULL, token text) ON COMMIT DROP").format(MAP))
    conn.execute(sql.SQL("INSERT INTO {} VALUES ('', NULL)").format(MAP))
    total = 0
    for table, column in hashed:
        t0, added = time.monotonic(), 0
        query = sql.SQL("SELECT d.v FROM (SELECT DISTINCT concat({c}) AS v FROM {t} WHERE {c} IS NOT NULL) d "
                        "WHERE NOT EXISTS (SELECT 1 FROM {m} WHERE m.key = 'v' || d.v)").format(
            c=sql.Identifier(column), t=ident(table), m=sql.SQL("{} m").format(MAP))
        with conn.cursor(name="dbops_mask_values") as values, conn.cursor() as out:
            values.execute(query)
            while batch := [r[0] for r in values.fetchmany(BATCH)]:
                with out.copy(sql.SQL("COPY {} (key, token) FROM STDIN").format(MAP)) as copy:
                    for value, tok in zip(batch, tokens(secret, batch)):
                        copy.write_row(("v" + value, tok))
                added += len(batch)
        conn.execute(sql.SQL("ANALYZE {}").format(MAP))
        total += added
        log(f"{table}.{column}: {added} new distinct values hashed in {time.monotonic() - t0:.1f} s")
    conn.execute(sql.SQL("CREATE UNIQUE INDEX ON {} (key)").format(MAP))
    conn.execute(sql.SQL("ANALYZE {}").format(MAP))
    return total


def _update(conn: psycopg.Connection, table: str, rules: TableRules, shape: _Shape) -> int:
    """One UPDATE for all of the table's masked columns: each hashed column joins the map once
    (every row matches exactly one map row per column, NULL included), so every row is written once."""
    sets, joins, where = [], [], []
    for i, (column, rule) in enumerate(rules.columns.items()):
        col = sql.Identifier(column)
        if rule.action == "hash":
            alias = f"m{i}"
            sets.append(sql.SQL("{} = {}").format(col, sql.Identifier(alias, "token")))
            joins.append(sql.SQL("{} {}").format(MAP, sql.Identifier(alias)))
            where.append(sql.SQL("{} = {}").format(sql.Identifier(alias, "key"), _key(column, "t")))
        elif rule.action is None:
            sets.append(sql.SQL("{} = NULL").format(col))
        else:
            sets.append(sql.SQL("{} = {}::{}").format(col, sql.Literal(rule.action[len("fixed:"):]),
                                                      sql.SQL(shape.tables[table][column].type)))
    query = sql.SQL("UPDATE {t} AS t SET {sets}").format(t=ident(table), sets=sql.SQL(", ").join(sets))
    if joins:
        query = sql.SQL("{} FROM {} WHERE {}").format(query, sql.SQL(", ").join(joins), sql.SQL(" AND ").join(where))
    return conn.execute(query).rowcount


def _left_unmasked(conn: psycopg.Connection, table: str, rules: TableRules, shape: _Shape) -> int:
    """Rows of ``table`` (all of them: the owner is not subject to row security here) whose masked
    columns do not hold what masking writes: must be 0."""
    checks = []
    for column, rule in rules.columns.items():
        col = sql.Identifier(column)
        if rule.action == "hash":
            checks.append(sql.SQL("({c} IS NOT NULL AND {c}::text !~ {re})").format(
                c=col, re=sql.Literal("^" + TOKEN_RE.pattern + "$")))
        elif rule.action is None:
            checks.append(sql.SQL("{} IS NOT NULL").format(col))
        else:
            checks.append(sql.SQL("{} IS DISTINCT FROM {}::{}").format(
                col, sql.Literal(rule.action[len("fixed:"):]), sql.SQL(shape.tables[table][column].type)))
    return conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
        ident(table), sql.SQL(" OR ").join(checks))).fetchone()[0]


TRIGGER_MODES = {"O": "ENABLE TRIGGER", "A": "ENABLE ALWAYS TRIGGER", "R": "ENABLE REPLICA TRIGGER"}


def _pause_triggers(conn: psycopg.Connection, tables: list[str], shape: _Shape) -> list[tuple[str, str, str]]:
    paused = []
    for table in tables:
        for name, mode in conn.execute("SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = %s AND NOT tgisinternal "
                                       "AND tgenabled <> 'D' ORDER BY tgname", (shape.oids[table],)).fetchall():
            conn.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER {}").format(ident(table), sql.Identifier(name)))
            paused.append((table, name, mode))
    return paused


def _materialized_views(conn: psycopg.Connection, oids: list[int]) -> list[tuple[str, str]]:
    """Populated materialized views built (through views or other materialized views) on these
    tables, each after those it reads: they hold copies of the old values until refreshed."""
    edges = conn.execute("""
        SELECT DISTINCT r.ev_class, d.refobjid FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
         WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass AND r.ev_class <> d.refobjid
    """).fetchall()
    readers: dict[int, set[int]] = {}
    for view, source in edges:
        readers.setdefault(source, set()).add(view)
    reached, frontier = set(), list(oids)
    while frontier:
        for view in readers.get(frontier.pop(), ()):
            if view not in reached:
                reached.add(view)
                frontier.append(view)
    if not reached:
        return []
    rows = {oid: (schema, name) for oid, schema, name in conn.execute(
        "SELECT c.oid, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = ANY(%s) AND c.relkind = 'm' AND c.relispopulated", (list(reached),)).fetchall()}
    order: list[int] = []
    done: set[int] = set()

    def visit(oid: int) -> None:          # those it reads first
        if oid in done:
            return
        done.add(oid)
        for source, views in readers.items():
            if oid in views and source in reached:
                visit(source)
        if oid in rows:
            order.append(oid)

    for oid in sorted(reached):
        visit(oid)
    return [rows[o] for o in order]


def _mask(conn: psycopg.Connection, shape: _Shape, rules: dict[str, TableRules], fks: list[_ForeignKey],
          secret: bytes | None, log: Callable[[str], None]) -> MaskResult:
    result = MaskResult()
    conn.execute("SET LOCAL statement_timeout = 0")
    conn.execute("SET LOCAL work_mem = '256MB'")           # the map join hashes in memory
    for fk in fks:
        conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(ident(fk.child), sql.Identifier(fk.name)))
    tables = sorted(rules)
    paused = _pause_triggers(conn, tables, shape)
    forced = [t for t in tables if conn.execute("SELECT relforcerowsecurity FROM pg_class WHERE oid = %s",
                                                (shape.oids[t],)).fetchone()[0]]
    for table in forced:
        conn.execute(sql.SQL("ALTER TABLE {} NO FORCE ROW LEVEL SECURITY").format(ident(table)))
    hashed = [(t, c) for t in tables for c, r in rules[t].columns.items() if r.action == "hash"]
    if hashed:
        result.distinct_values = _build_map(conn, hashed, secret, log)
    for table in tables:
        t0 = time.monotonic()
        rows = _update(conn, table, rules[table], shape)
        left = _left_unmasked(conn, table, rules[table], shape)
        if left:
            raise MaskingFailed(f"{left} rows of {table} still hold unmasked values after its UPDATE; everything was "
                                "rolled back", "this is a bug in dbops: please report it")
        result.tables[table], result.columns[table] = rows, list(rules[table].columns)
        log(f"{table}: {rows} rows masked ({', '.join(rules[table].columns)}) in {time.monotonic() - t0:.1f} s")
    for fk in fks:
        t0 = time.monotonic()
        conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
            ident(fk.child), sql.Identifier(fk.name), sql.SQL(fk.definition)))
        result.foreign_keys.append(f"{fk.child}.{fk.name}")
        log(f"foreign key {fk.name!r} of {fk.child} re-added and validated in {time.monotonic() - t0:.1f} s")
    for table, name, mode in paused:
        conn.execute(sql.SQL("ALTER TABLE {} {} {}").format(ident(table), sql.SQL(TRIGGER_MODES[mode]), sql.Identifier(name)))
    for table in forced:
        conn.execute(sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(ident(table)))
    for schema, name in _materialized_views(conn, [shape.oids[t] for t in tables]):
        conn.execute(sql.SQL("REFRESH MATERIALIZED VIEW {}").format(sql.Identifier(schema, name)))
        result.refreshed.append(qualified(schema, name))
    for table in tables:       # statistics (most common values, histograms) held the old values
        conn.execute(sql.SQL("ANALYZE {}").format(ident(table)))
    return result


def mask_database(conn: psycopg.Connection, settings: GdprSettings, tables: Iterable[str] | None = None,
                  secret: bytes | None = None, log: Callable[[str], None] = lambda line: None,
                  vacuum: bool = True) -> MaskResult:
    """Mask every row of the configured tables in the database of ``conn`` (autocommit mode), in
    one transaction: every listed column is masked, or nothing changes. ``tables``: only these
    (the tables a partial restore brought); by default every configured table must exist."""
    if not conn.autocommit:
        raise ValueError("mask_database needs a connection in autocommit mode: it runs its own transaction")
    t0 = time.monotonic()
    rules = mask_rules(settings)
    if not rules:
        raise ConfigError("the gdpr section lists nothing to mask",
                          "list the personal columns under gdpr.mask (table: {column: null | hash | \"fixed:<value>\"})")
    if tables is not None:
        keep = {canonical_table(t) for t in tables}
        rules = {t: r for t, r in rules.items() if t in keep}
    if secret is None:
        secret = mask_secret(settings, rules)
    if not rules:
        return MaskResult(notes=["none of the configured tables is in this database's restored set: nothing to mask"])
    try:
        with conn.transaction():
            shape = _shape_from_database(conn)
            _check(shape, rules, "the destination database")
            fks = [fk for fk in shape.foreign_keys if _touches(fk, rules)]
            _check_in_database(conn, shape, rules, fks)
            result = _mask(conn, shape, rules, fks, secret, log)
    except psycopg.Error as exc:
        # Never str(exc): its DETAIL quotes row values, and these are personal data.
        raise MaskingFailed(f"masking failed and was rolled back, nothing was masked: {why_not(exc)}",
                            "a CHECK constraint, index or trigger the masked values break, or a lock another session "
                            "held; change it (or the masking configuration) and mask again") from None
    if vacuum:
        for table in sorted(result.tables):
            try:    # the old row versions (original values) leave the table's files and indexes
                conn.execute(sql.SQL("VACUUM (FULL, ANALYZE) {}").format(ident(table)))
            except psycopg.Error as exc:
                result.notes.append(f"VACUUM FULL {table} failed ({why_not(exc)}): the masking is committed, but old "
                                    "row versions with the original values stay in its files until it is vacuumed")
    result.seconds = time.monotonic() - t0
    return result


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
    shape = _shape_from_fingerprint(manifest.schema_fingerprint)
    if shape is not None:
        # pg_restore --table restores no constraints; otherwise a key between two restored tables comes along.
        fks = [] if selected else [fk for fk in shape.foreign_keys
                                   if in_copy is None or (fk.child in in_copy and fk.parent in in_copy)]
        _check(shape, rules, f"backup {manifest.backup_id}", fks)
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
