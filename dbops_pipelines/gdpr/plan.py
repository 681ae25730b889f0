"""What a GDPR cleanup would do now, counted without changing anything (the dry run).

The cutoff is the database's own clock minus the grace period. Eligible are the rows whose
soft-delete timestamp is older than the cutoff: the subject table's people, and the rows of other
soft-deletable tables. For each eligible person the rows that belong to them are found by
following the foreign keys down from the subject table: a key whose child table is configured
``anonymize`` keeps its rows (their personal columns are overwritten); ``ON DELETE SET NULL`` /
``SET DEFAULT`` keeps them with the key cleared; every other rule (CASCADE, NO ACTION, RESTRICT)
means the rows go, and the rows below them follow the same rules in turn.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

import psycopg
from psycopg import sql

from dbops_pipelines.backup.snapshot import split_table
from dbops_pipelines.gdpr.catalog import ForeignKey, GdprCatalog, Table

SAMPLE_KEYS = 5


@dataclass
class TablePlan:
    table: str
    action: str                 # delete | anonymize | set null (its key to the person is cleared)
    rows: int
    why: str                    # "soft-deleted before the cutoff" or the foreign keys that lead here
    sample_keys: list[list] = field(default_factory=list)   # a few primary keys, for the soft-deleted rows


@dataclass
class CleanupPlan:
    target: str
    cutoff: datetime
    grace_days: int
    tables: list[TablePlan]
    skipped: dict[str, str]                  # soft-deletable tables cleanup cannot work on, and why
    unindexed: list[str]                     # foreign keys without an index on the referencing side
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"target": self.target, "cutoff": self.cutoff.isoformat(), "grace_days": self.grace_days,
                "tables": [asdict(t) for t in self.tables], "skipped": self.skipped, "unindexed": self.unindexed,
                "notes": self.notes}

    def total(self, action: str) -> int:
        return sum(t.rows for t in self.tables if t.action == action)


def ident(name: str) -> sql.Composed:
    """A qualified table name (as the catalog gives it) as SQL: both parts quoted."""
    schema, table = split_table(name)
    return sql.Identifier(schema, table)


def cols(columns) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(c) for c in columns)


def eligible(table: Table, column: str, cutoff: datetime) -> sql.Composed:
    """The primary keys of ``table``'s rows soft-deleted before ``cutoff`` (a subquery)."""
    return sql.SQL("SELECT {pk} FROM {t} WHERE {col} < {cutoff}").format(
        pk=cols(table.primary_key), t=ident(table.name), col=sql.Identifier(column), cutoff=sql.Literal(cutoff))


def link_action(catalog: GdprCatalog, fk: ForeignKey) -> str:
    if fk.child in catalog.anonymized and catalog.anonymized[fk.child].action == "anonymize":
        return "anonymize"
    if fk.on_delete in ("set null", "set default"):
        return "set null"
    return "delete"


def reached_rows(catalog: GdprCatalog, subject_rows: sql.Composable) -> dict[str, list[tuple[ForeignKey, sql.Composed]]]:
    """For each table below the subject, the rows that belong to the people ``subject_rows`` (a
    WHERE condition on the subject table) selects: per foreign key that leads there, a WHERE
    condition on the child. Only rows that go lead further down."""
    subject = catalog.subject
    # The rows of a table that go, as conditions each served by an index; combined with UNION ALL
    # below, never OR (an OR of two keys' IN-subqueries scans the whole table).
    going: dict[str, list[sql.Composable]] = {subject.name: [subject_rows]}
    reached: dict[str, list[tuple[ForeignKey, sql.Composed]]] = {}
    for table in reversed(catalog.deletion_order()):          # parents first: all of a table's ways in are known
        if table != subject.name:
            rows = [w for fk, w in reached.get(table, []) if link_action(catalog, fk) == "delete"]
            if not rows:
                continue                                       # nothing of it goes: nothing below it follows
            going[table] = rows
        for fk in (f for f in catalog.links if f.parent == table and f.child != f.parent):
            parents = sql.SQL(" UNION ALL ").join(
                sql.SQL("SELECT {parent_cols} FROM {parent} WHERE {w}").format(
                    parent_cols=cols(fk.parent_columns), parent=ident(fk.parent), w=w) for w in going[table])
            where = sql.SQL("({child_cols}) IN ({parents})").format(child_cols=cols(fk.child_columns), parents=parents)
            reached.setdefault(fk.child, []).append((fk, where))
    return reached


def dry_run(conn: psycopg.Connection, target: str, catalog: GdprCatalog, grace_days: int,
            column: str = "deleted_at") -> CleanupPlan:
    """Count what a cleanup would do now; reads only."""
    (now,) = conn.execute("SELECT now()").fetchone()
    cutoff = now - timedelta(days=grace_days)
    tables: list[TablePlan] = []
    for table in catalog.soft_deletable:
        keys = conn.execute(sql.SQL("{q} ORDER BY {pk}").format(q=eligible(table, column, cutoff),
                                                                pk=cols(table.primary_key))).fetchall()
        tables.append(TablePlan(table.name, "delete", len(keys), f"soft-deleted before the cutoff ({column})",
                                [list(k) for k in keys[:SAMPLE_KEYS]]))
    people = sql.SQL("({cols}) IN ({keys})").format(cols=cols(catalog.subject.primary_key),
                                                     keys=eligible(catalog.subject, column, cutoff))
    for child, ways in sorted(reached_rows(catalog, people).items()):
        for action in ("delete", "anonymize", "set null"):
            conditions = [w for fk, w in ways if link_action(catalog, fk) == action]
            if not conditions:
                continue
            # Rows reached by several keys count once; one branch per key keeps each on its index.
            (rows,) = conn.execute(sql.SQL("SELECT count(*) FROM ({u}) AS reached").format(
                u=sql.SQL(" UNION ").join(sql.SQL("SELECT ctid FROM {t} WHERE {w}").format(t=ident(child), w=w)
                                         for w in conditions))).fetchone()
            via = ", ".join(f"{fk.constraint} -> {fk.parent}" for fk, _ in ways if link_action(catalog, fk) == action)
            tables.append(TablePlan(child, action, rows, f"belongs to a person being removed (via {via})"))
    unindexed = [f"{fk.child} ({', '.join(fk.child_columns)}) -> {fk.parent} [{fk.constraint}]"
                 for fk in catalog.unindexed_links()]
    return CleanupPlan(target, cutoff, grace_days, tables, dict(catalog.skipped), unindexed)
