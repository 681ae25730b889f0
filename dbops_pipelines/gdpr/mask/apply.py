"""The masking transaction: foreign keys dropped and re-added, triggers paused, the token map
built, one UPDATE per table, materialized views refreshed; mask_database runs it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from dbops_pipelines.backup.snapshot import canonical_table, qualified
from dbops_pipelines.config import GdprSettings
from dbops_pipelines.errors import ConfigError
from dbops_pipelines.gdpr.cleanup import why_not
from dbops_pipelines.gdpr.mask.checks import check, check_in_database, touches
from dbops_pipelines.gdpr.mask.rules import TOKEN_RE, MaskingFailed, TableRules, mask_rules, mask_secret, tokens
from dbops_pipelines.gdpr.mask.shape import ForeignKey, Shape, shape_from_database
from dbops_pipelines.gdpr.plan import ident

MAP = sql.SQL("pg_temp.dbops_mask_map")
BATCH = 50_000                   # distinct values per fetch / COPY


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


def _update(conn: psycopg.Connection, table: str, rules: TableRules, shape: Shape) -> int:
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


def _left_unmasked(conn: psycopg.Connection, table: str, rules: TableRules, shape: Shape) -> int:
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


def _pause_triggers(conn: psycopg.Connection, tables: list[str], shape: Shape) -> list[tuple[str, str, str]]:
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


def _mask(conn: psycopg.Connection, shape: Shape, rules: dict[str, TableRules], fks: list[ForeignKey],
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
            shape = shape_from_database(conn)
            check(shape, rules, "the destination database")
            fks = [fk for fk in shape.foreign_keys if touches(fk, rules)]
            check_in_database(conn, shape, rules, fks)
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
