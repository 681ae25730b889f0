"""What GDPR cleanup works on, read from the target's catalog and checked against dbops.yaml.

Names in dbops.yaml are schema.table as in backups (backup/snapshot.py: split_table, qualified).
Every configured name must exist: a typo is a configuration error naming it (with near misses),
never SQL. Soft-deletable tables are discovered (a timestamp column named like
``soft_delete_column``) unless excluded; the rows that belong to a subject are found by following
the foreign keys that reach the subject table, with each key's ON DELETE rule and whether the
referencing side has an index (without one, every delete of a subject scans that table).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import re

import psycopg
from psycopg import sql

from dbops_pipelines.backup.snapshot import NAMING_HINT, near_misses, qualified, split_table
from dbops_pipelines.config import GdprSettings, GdprTableSettings
from dbops_pipelines.errors import ConfigError

ON_DELETE = {"a": "no action", "r": "restrict", "c": "cascade", "n": "set null", "d": "set default"}
USER_SCHEMAS = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_'"


@dataclass(frozen=True)
class Table:
    name: str                        # qualified: public.users, "Odd Schema"."Users"
    oid: int
    primary_key: tuple[str, ...]     # column names, in key order
    soft_delete: bool                # has the soft-delete timestamp column
    key_types: tuple[str, ...] = ()  # the key columns' types (format_type): keys travel as text, cast back


@dataclass(frozen=True)
class ForeignKey:
    constraint: str
    child: str                       # the referencing table (qualified)
    child_columns: tuple[str, ...]
    parent: str                      # the referenced table (qualified)
    parent_columns: tuple[str, ...]
    on_delete: str                   # cascade | set null | set default | restrict | no action
    indexed: bool                    # the child's columns lead some valid index


@dataclass
class GdprCatalog:
    subject: Table
    soft_deletable: list[Table]                       # the subject table first when it has the column
    anonymized: dict[str, GdprTableSettings]          # qualified name -> what to do to its columns
    links: list[ForeignKey] = field(default_factory=list)   # every key reaching the subject table, transitively
    # Soft-deletable tables cleanup cannot work on, with why (reported by every run, never skipped silently).
    skipped: dict[str, str] = field(default_factory=dict)
    kept: dict[str, Table] = field(default_factory=dict)   # anonymized tables (their keys: rows are updated by them)

    def deletion_order(self) -> list[str]:
        """The tables under the subject, children before their parents, the subject last: the
        order in which a subject's rows can be removed without a foreign key refusing. A key of a
        table to itself (users.deleted_by) does not order anything; a longer cycle is an error."""
        children: dict[str, set[str]] = defaultdict(set)
        for fk in self.links:
            # Only keys whose child rows go order anything: rows kept (SET NULL, anonymized) do not.
            if fk.child != fk.parent and fk.on_delete not in ("set null", "set default") \
                    and getattr(self.anonymized.get(fk.child), "action", "delete") != "anonymize":
                children[fk.parent].add(fk.child)
        order: list[str] = []
        state: dict[str, str] = {}

        def visit(table: str, path: list[str]) -> None:
            if state.get(table) == "done":
                return
            if state.get(table) == "open":
                cycle = " -> ".join(path[path.index(table):] + [table])
                raise ConfigError(f"the foreign keys under the subject table form a cycle: {cycle}",
                                  "break it for cleanup: exclude one of these tables (gdpr.exclude) or list it with "
                                  "action anonymize")
            state[table] = "open"
            for child in sorted(children[table]):
                visit(child, path + [table])
            state[table] = "done"
            order.append(table)

        visit(self.subject.name, [])
        return order

    def unindexed_links(self) -> list[ForeignKey]:
        return [fk for fk in self.links if not fk.indexed]


def _resolve(conn: psycopg.Connection, name: str, what: str) -> tuple[int, str]:
    schema, table = split_table(name)
    if not schema or not table:
        raise ConfigError(f"{what} {name!r} is not a table name", f"name tables as {NAMING_HINT}")
    row = conn.execute(
        "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')", (schema, table)).fetchone()
    if row is None:
        existing = [qualified(s, t) for s, t in conn.execute(
            f"SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE c.relkind IN ('r', 'p') AND {USER_SCHEMAS}").fetchall()]
        raise ConfigError(f"{what} {qualified(schema, table)} does not exist in the target database"
                          + near_misses([name], existing), f"name an existing table as {NAMING_HINT}")
    return row[0], qualified(schema, table)


def _primary_key(conn: psycopg.Connection, oid: int) -> tuple[str, ...]:
    rows = conn.execute(
        "SELECT a.attname FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
        "WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.ord", (oid,)).fetchall()
    return tuple(r[0] for r in rows)


def _columns(conn: psycopg.Connection, oid: int) -> dict[str, str]:
    rows = conn.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                        "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped", (oid,)).fetchall()
    return dict(rows)


def column_types(conn: psycopg.Connection, oid: int) -> dict[str, str]:
    """Column name -> its type as format_type spells it (keys are cast back to these)."""
    return _columns(conn, oid)


def _is_timestamp(type_name: str | None) -> bool:
    return bool(type_name) and type_name.startswith("timestamp")


def _table(conn: psycopg.Connection, oid: int, name: str, soft_delete_column: str) -> Table:
    columns, key = _columns(conn, oid), _primary_key(conn, oid)
    return Table(name, oid, key, _is_timestamp(columns.get(soft_delete_column)), tuple(columns[c] for c in key))


def table_named(conn: psycopg.Connection, name: str, soft_delete_column: str) -> Table:
    """``name`` (qualified) as cleanup sees it; ConfigError when there is no such table."""
    return _table(conn, _resolve(conn, name, "table")[0], name, soft_delete_column)


def soft_delete_table(conn: psycopg.Connection, name: str, soft_delete_column: str) -> Table | None:
    """``name`` (qualified) as cleanup sees it, when it has the soft-delete timestamp column."""
    table = table_named(conn, name, soft_delete_column)
    return table if table.soft_delete else None


def _foreign_keys(conn: psycopg.Connection) -> list[ForeignKey]:
    rows = conn.execute(f"""
        SELECT quote_ident(con.conname), cn.nspname, c.relname, pn.nspname, p.relname, con.confdeltype,
               ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(attnum, ord)
                       JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum ORDER BY k.ord),
               ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(attnum, ord)
                       JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum ORDER BY k.ord),
               EXISTS (SELECT 1 FROM pg_index i
                        WHERE i.indrelid = con.conrelid AND i.indisvalid AND i.indpred IS NULL
                          AND i.indnkeyatts >= cardinality(con.conkey)
                          AND (i.indkey::int2[])[0:cardinality(con.conkey) - 1] @> con.conkey
                          AND (i.indkey::int2[])[0:cardinality(con.conkey) - 1] <@ con.conkey)
          FROM pg_constraint con
          JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace
          JOIN pg_class p ON p.oid = con.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE con.contype = 'f' AND con.conparentid = 0 AND {USER_SCHEMAS}
    """).fetchall()
    return [ForeignKey(constraint, qualified(cs, ct), tuple(cols), qualified(ps, pt), tuple(pcols),
                       ON_DELETE.get(rule, rule), bool(indexed))
            for constraint, cs, ct, ps, pt, rule, cols, pcols, indexed in rows]


def discover(conn: psycopg.Connection, settings: GdprSettings) -> GdprCatalog:
    """Resolve and check every name in ``settings`` against the catalog, discover the
    soft-deletable tables, and follow the foreign keys that reach the subject table."""
    subject_oid, subject_name = _resolve(conn, settings.subject_table, "gdpr.subject_table")
    subject = _table(conn, subject_oid, subject_name, settings.soft_delete_column)
    if not subject.primary_key:
        raise ConfigError(f"gdpr.subject_table {subject_name} has no primary key",
                          "cleanup removes people by primary key, in batches: give the table one")
    if not subject.soft_delete:
        raise ConfigError(f"gdpr.subject_table {subject_name} has no timestamp column {settings.soft_delete_column!r}",
                          "cleanup removes the rows soft-deleted longer ago than the grace period: set "
                          "gdpr.soft_delete_column to the column that records when a person was deleted")
    excluded = {_resolve(conn, name, "gdpr.exclude entry")[1] for name in settings.exclude}
    if subject_name in excluded:
        raise ConfigError(f"the subject table {subject_name} is in gdpr.exclude",
                          "remove it from gdpr.exclude: the subject table's people are what cleanup removes")
    configured: dict[str, GdprTableSettings] = {}
    oids: dict[str, int] = {}          # each configured table, resolved once
    for name, table_settings in settings.tables.items():
        oid, qname = _resolve(conn, name, "gdpr.tables entry")
        oids[qname] = oid
        if qname in excluded:
            raise ConfigError(f"{qname} is both in gdpr.tables and gdpr.exclude", "keep it in one of them")
        if qname == subject_name and table_settings.action != "delete":
            raise ConfigError(f"gdpr.tables.{qname}: the subject table's people are deleted, not anonymized",
                              "list it with action delete (or not at all); anonymize the tables that keep rows")
        missing = sorted(set(table_settings.columns) - set(_columns(conn, oid)))
        if missing:
            raise ConfigError(f"gdpr.tables.{qname}: no column {', '.join(repr(c) for c in missing)} in {qname}",
                              "name existing columns exactly (case-sensitive)")
        configured[qname] = table_settings

    soft: list[Table] = [subject]
    skipped: dict[str, str] = {}
    if not settings.tables:   # discovered: every table with the soft-delete timestamp column
        rows = conn.execute(f"""
            SELECT c.oid, n.nspname, c.relname FROM pg_attribute a
              JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE a.attname = %s AND NOT a.attisdropped AND c.relkind IN ('r', 'p') AND NOT c.relispartition
               AND a.atttypid IN ('timestamp'::regtype, 'timestamptz'::regtype) AND {USER_SCHEMAS}
             ORDER BY n.nspname, c.relname""", (settings.soft_delete_column,)).fetchall()
        found = [(oid, qualified(s, t)) for oid, s, t in rows]
    else:
        found = [(oids[name], name) for name, ts in configured.items() if ts.action == "delete"]
    for oid, name in found:
        if name != subject_name and name not in excluded:
            table = _table(conn, oid, name, settings.soft_delete_column)
            if not table.soft_delete:
                skipped[name] = f"no timestamp column {settings.soft_delete_column!r}"
            elif not table.primary_key:
                skipped[name] = "no primary key: cleanup removes rows by key, in batches; give it one or exclude it"
            else:
                soft.append(table)

    links, reached, frontier = [], {subject_name}, [subject_name]
    by_parent: dict[str, list[ForeignKey]] = defaultdict(list)
    for fk in _foreign_keys(conn):
        by_parent[fk.parent].append(fk)
    while frontier:
        parent = frontier.pop()
        for fk in sorted(by_parent[parent], key=lambda f: (f.child, f.constraint)):
            if fk.child in excluded:
                # Excluded means never touched: a key that would cascade into it, or refuse the
                # delete, or need its rows cleared, cannot be left to chance.
                raise ConfigError(f"{fk.child} is in gdpr.exclude, but its foreign key {fk.constraint} "
                                  f"({', '.join(fk.child_columns)}) references {fk.parent}, whose rows cleanup removes "
                                  f"(ON DELETE {fk.on_delete.upper()})",
                                  "remove it from gdpr.exclude and list it with action anonymize to keep its rows, "
                                  "or change the key")
            links.append(fk)
            if fk.child not in reached:
                reached.add(fk.child)
                frontier.append(fk.child)
    # Soft-deletable tables besides the subject whose rows other rows reference: removing them
    # would cascade into, or be refused by, rows this run does not follow. Reported, left alone.
    for table in [t for t in soft[1:] if by_parent.get(t.name)]:
        soft.remove(table)
        keys = ", ".join(sorted({fk.constraint for fk in by_parent[table.name]}))
        skipped[table.name] = (f"other rows reference it ({keys}); cleanup of such tables, with what belongs to "
                               "their rows, is not supported yet: exclude it or clean it by hand")
    catalog = GdprCatalog(subject, soft, configured, links, skipped)
    catalog.deletion_order()   # a cycle is a configuration problem: say so before anything runs
    _check_anonymized(conn, catalog, oids)
    return catalog


HASH_TOKEN_CHARS = 29      # "anon_" + 24 hex characters of HMAC-SHA-256 (anonymize.py)


def _check_anonymized(conn: psycopg.Connection, catalog: GdprCatalog, oids: dict[str, int]) -> None:
    """An anonymized table keeps its rows: it needs a key to update them by, its link to the
    person must be clearable (the person row goes), a hash must fit its column, and a fixed value
    must be a value of its column's type. Checked before anything runs."""
    for name, table_settings in catalog.anonymized.items():
        if table_settings.action != "anonymize":
            continue
        oid = oids[name]
        catalog.kept[name] = _table(conn, oid, name, "")
        if not catalog.kept[name].primary_key:
            raise ConfigError(f"gdpr.tables.{name}: an anonymized table needs a primary key", "give it one")
        types = _columns(conn, oid)
        not_null = {r[0] for r in conn.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnotnull",
                                               (oid,)).fetchall()}
        for fk in (f for f in catalog.links if f.child == name):
            blocked = sorted(set(fk.child_columns) & not_null)
            if blocked:
                raise ConfigError(f"gdpr.tables.{name}: its rows are kept, but {', '.join(blocked)} (its key to "
                                  f"{fk.parent}) is NOT NULL, so the person could not be deleted",
                                  "allow NULL in that column, or delete these rows (action delete)")
        for column, action in table_settings.columns.items():
            kind = types[column]
            if action == "hash" and not (kind == "text" or kind.startswith(("character varying", "character("))
                                         and _fits(kind, HASH_TOKEN_CHARS)):
                raise ConfigError(f"gdpr.tables.{name}.columns.{column}: a hash token is text of "
                                  f"{HASH_TOKEN_CHARS} characters and the column is {kind}",
                                  "use null or \"fixed:<value>\" for this column")
            if action is None and column in not_null:
                raise ConfigError(f"gdpr.tables.{name}.columns.{column}: the column is NOT NULL",
                                  "use hash or \"fixed:<value>\" for it")
            if action is not None and action.startswith("fixed:"):
                try:
                    with conn.transaction():
                        conn.execute(sql.SQL("SELECT {}::{}").format(sql.Literal(action[len("fixed:"):]), sql.SQL(kind)))
                except psycopg.Error:
                    raise ConfigError(f"gdpr.tables.{name}.columns.{column}: {action[len('fixed:'):]!r} is not a "
                                      f"value of type {kind}", "give a value of the column's type") from None


def _fits(kind: str, chars: int) -> bool:
    m = re.search(r"\((\d+)\)", kind)
    return m is None or int(m[1]) >= chars
