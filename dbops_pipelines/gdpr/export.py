"""GDPR subject export (Art. 15 access, Art. 20 portability): every row that belongs to one person,
as machine-readable JSON grouped by table, with a manifest of what was searched.

The person is one row of ``gdpr.subject_table``, named by its primary key (given as text; a
composite key as a JSON array, in key order), cast to the key's own types on the server. What
belongs to them is found by following every foreign key down from the subject table, whatever its
ON DELETE rule and whatever cleanup does to the table (delete, anonymize, exclude): a child of a
child belongs too, and a table reached by several keys lists each row once. Two kinds of key are
not followed, and the manifest says so: a key into the subject table itself (its rows are other
people) and a key of a table to itself (a reply to a person's comment is someone else's).

Everything is read in one REPEATABLE READ READ ONLY transaction, as the target's backup role with
``default_transaction_read_only``: one consistent snapshot, and no bug can write. Rows are turned
into JSON by the server (``row_to_json``), which writes every type exactly: timestamps in ISO 8601
(UTC), infinity as a string, bytea as ``\\x`` hex, json/jsonb as themselves, arrays as lists. A
number with a fraction or an exponent (numeric, real, double precision) is kept as a string of
PostgreSQL's own digits, so no reader rounds it. Nothing of a row is ever logged or put into an
error message; the file (mode 0600) is the only place personal data goes.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psycopg
from psycopg import sql

from dbops_pipelines.backup.snapshot import split_table
from dbops_pipelines.config import FleetConfig
from dbops_pipelines.errors import ConfigError, ExportFailed, InvalidSubjectId, SubjectNotFound
from dbops_pipelines.gdpr.catalog import ForeignKey, Table, _foreign_keys, _resolve, _table
from dbops_pipelines.gdpr.plan import ident
from dbops_pipelines.gdpr.service import _connect, gdpr_settings

FORMAT = "dbops-gdpr-export"
VERSION = 1
ROW = "_dbops_row"          # the alias rows are read under: a column named like the table cannot shadow it


@dataclass
class SearchedTable:
    table: str
    via: list[dict]          # the foreign keys followed into it: constraint, from (the parent table), columns
    rows: int = 0


@dataclass
class SubjectExport:
    target: str
    subject_table: str
    subject_key: dict                                   # primary key column -> value, as in the row
    exported_at: datetime                               # the snapshot's time (the transaction's start)
    searched: list[SearchedTable]
    tables: dict[str, list[dict]]                       # qualified table name -> its rows, as JSON objects
    not_followed: list[dict] = field(default_factory=list)

    @property
    def total_rows(self) -> int:
        return sum(t.rows for t in self.searched)

    def manifest(self) -> dict:
        """What was searched and how many rows each table gave: no personal data."""
        return {"searched": [{"table": t.table, "via": t.via, "rows": t.rows} for t in self.searched],
                "not_followed": self.not_followed, "total_rows": self.total_rows}

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "target": self.target, "subject_table": self.subject_table,
                "subject_key": self.subject_key, "exported_at": self.exported_at.isoformat(),
                "snapshot": "repeatable read", "manifest": self.manifest(), "tables": self.tables}

    def summary(self) -> str:
        """One line without personal data: the tables and their row counts."""
        counts = ", ".join(f"{t.table} {t.rows}" for t in self.searched)
        return (f"exported {self.total_rows} rows of one subject of {self.target} from {len(self.searched)} "
                f"tables ({counts})")


def _key_values(subject: Table, subject_id: str) -> list[str]:
    """The subject id as one text per key column. Never echoes the id: it may be an e-mail address."""
    n = len(subject.primary_key)
    if n == 1:
        return [subject_id]
    try:
        values = json.loads(subject_id)
    except ValueError:
        values = None
    if not isinstance(values, list) or len(values) != n or any(v is None or isinstance(v, (list, dict)) for v in values):
        raise InvalidSubjectId(
            f"{subject.name} has a composite primary key ({', '.join(subject.primary_key)}): the subject id must be "
            f"a JSON array of {n} values, in key order",
            "e.g. --subject '[\"eu\", 42]' (strings quoted, numbers as they are)")
    return [v if isinstance(v, str) else json.dumps(v) for v in values]


def _check_types(conn: psycopg.Connection, subject: Table, values: list[str]) -> None:
    """Each key value must be a value of its column's type: said plainly, before the snapshot."""
    for value, column, kind in zip(values, subject.primary_key, subject.key_types):
        try:
            with conn.transaction():
                conn.execute(sql.SQL("SELECT {}::{}").format(sql.Literal(value), sql.SQL(kind)))
        except (psycopg.DataError, psycopg.errors.IntegrityError):
            raise InvalidSubjectId(f"the subject id is not a value of {subject.name}.{column}, of type {kind}",
                                   f"give the primary key of the person's row in {subject.name} as a {kind}") from None


def _column_types(conn: psycopg.Connection, name: str) -> dict[str, str]:
    schema, table = split_table(name)
    return dict(conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped", (schema, table)).fetchall())


def _key_condition(columns: tuple[str, ...], types: list[str], keys: list[tuple[str, ...]]) -> sql.Composed:
    """Rows whose ``columns`` equal one of ``keys``. Keys travel as text and are cast back on the
    server to the referenced columns' own types (as cleanup does): exact, and the child's index applies."""
    arrays = sql.SQL(", ").join(sql.SQL("{}::text[]").format(sql.Literal([k[i] for k in keys]))
                                for i in range(len(columns)))
    casts = sql.SQL(", ").join(sql.SQL("k.c{}::{}").format(sql.SQL(str(i)), sql.SQL(t)) for i, t in enumerate(types))
    names = sql.SQL(", ").join(sql.SQL("c{}").format(sql.SQL(str(i))) for i in range(len(columns)))
    mine = sql.SQL(", ").join(sql.Identifier(ROW, c) for c in columns)
    return sql.SQL("({mine}) IN (SELECT {casts} FROM unnest({arrays}) AS k({names}))").format(
        mine=mine, casts=casts, arrays=arrays, names=names)


def _links(conn: psycopg.Connection, subject: str) -> tuple[list[str], dict[str, list[ForeignKey]], list[dict]]:
    """Every table reachable from the subject table by foreign keys (the subject first, then
    breadth first), the keys to follow out of each, and the keys not followed with why."""
    by_parent: dict[str, list[ForeignKey]] = defaultdict(list)
    for fk in _foreign_keys(conn):
        by_parent[fk.parent].append(fk)
    order, seen, queue = [subject], {subject}, deque([subject])
    follow: dict[str, list[ForeignKey]] = defaultdict(list)
    not_followed: list[dict] = []
    while queue:
        parent = queue.popleft()
        for fk in sorted(by_parent[parent], key=lambda f: (f.child, f.constraint)):
            if fk.child == subject or fk.child == fk.parent:
                why = ("its rows are other people (rows of the subject table)" if fk.child == subject
                       else "a key of a table to itself: the rows it reaches belong to others")
                not_followed.append({"constraint": fk.constraint, "table": fk.child, "from": fk.parent, "why": why})
                continue
            follow[parent].append(fk)
            if fk.child not in seen:
                seen.add(fk.child)
                order.append(fk.child)
                queue.append(fk.child)
    return order, follow, not_followed


def _why(exc: psycopg.Error) -> str:
    """A database failure without anything that could quote a value (DETAIL never, the first
    line only when it is known to hold none)."""
    if isinstance(exc, (psycopg.errors.InsufficientPrivilege, psycopg.errors.QueryCanceled, psycopg.OperationalError)):
        return f"{type(exc).__name__}: {exc.diag.message_primary or (str(exc).strip().splitlines() or ['failed'])[0]}"
    return f"{type(exc).__name__} (SQLSTATE {exc.sqlstate})"


def _load(text: str):
    # Numbers with a fraction or exponent stay PostgreSQL's exact digits (a string), never a float.
    return json.loads(text, parse_float=str, parse_constant=str)


def export_subject(cfg: FleetConfig, target: str, subject_id: str) -> SubjectExport:
    """Read every row that belongs to the person ``subject_id`` of ``target``'s subject table, in
    one read-only repeatable-read snapshot, as the backup role. Raises SubjectNotFound when no
    row of the subject table has that key, InvalidSubjectId when the id is not of the key's type."""
    settings = gdpr_settings(cfg, target)
    with _connect(cfg, target, "backup") as conn:
        oid, name = _resolve(conn, settings.subject_table, "gdpr.subject_table")
        subject = _table(conn, oid, name, settings.soft_delete_column)
        if not subject.primary_key:
            raise ConfigError(f"gdpr.subject_table {name} has no primary key",
                              "a person is named by the primary key of their row: give the table one")
        values = _key_values(subject, subject_id)
        _check_types(conn, subject, values)
        order, follow, not_followed = _links(conn, name)

        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            (exported_at,) = conn.execute("SELECT now()").fetchone()
            types = {table: _column_types(conn, table) for table in order}
            found: dict[str, dict[str, dict]] = {table: {} for table in order}   # table -> row identity -> row
            via: dict[str, list[dict]] = {table: [] for table in order}
            for table in order:
                for fk in follow[table]:
                    via[fk.child].append({"constraint": fk.constraint, "from": fk.parent, "columns": list(fk.child_columns)})

            queue = deque([(name, _key_condition(subject.primary_key, list(subject.key_types), [tuple(values)]))])
            while queue:
                table, condition = queue.popleft()
                out_columns = list(dict.fromkeys(c for fk in follow[table] for c in fk.parent_columns))
                texts = sql.SQL("").join(sql.SQL(", {}::text").format(sql.Identifier(ROW, c)) for c in out_columns)
                try:
                    rows = conn.execute(sql.SQL(
                        "SELECT {r}.tableoid::oid::text || ':' || {r}.ctid::text, row_to_json({r}.*)::text{texts} "
                        "FROM {t} AS {r} WHERE {w} ORDER BY {r}.tableoid, {r}.ctid").format(
                        r=sql.Identifier(ROW), texts=texts, t=ident(table), w=condition)).fetchall()
                except psycopg.Error as exc:
                    raise ExportFailed(f"reading {table} failed: {_why(exc)}; nothing was written",
                                       "check that the target's backup role can read every table under the subject "
                                       "table, and the server's log") from None
                new = [r for r in rows if r[0] not in found[table]]
                for identity, row_json, *_ in new:
                    found[table][identity] = _load(row_json)
                for fk in follow[table]:       # only rows not seen before lead further: cycles end
                    positions = [2 + out_columns.index(c) for c in fk.parent_columns]
                    keys = list(dict.fromkeys(tuple(r[p] for p in positions) for r in new))
                    keys = [k for k in keys if None not in k]      # a NULL is referenced by nothing
                    if keys:
                        parent_types = [types[table][c] for c in fk.parent_columns]
                        queue.append((fk.child, _key_condition(fk.child_columns, parent_types, keys)))

        if not found[name]:
            raise SubjectNotFound(f"no row of {name} has that primary key ({', '.join(subject.primary_key)})",
                                  f"give the primary key of an existing row of {name} (nothing was written)")
        person = next(iter(found[name].values()))
        return SubjectExport(
            target=target, subject_table=name, subject_key={c: person.get(c) for c in subject.primary_key},
            exported_at=exported_at,
            searched=[SearchedTable(t, via[t], len(found[t])) for t in order],
            tables={t: list(found[t].values()) for t in order},
            not_followed=not_followed)


def check_out(out: str | os.PathLike, force: bool) -> Path:
    """Where the export will go, checked before anything is read: an existing file is kept unless ``force``."""
    path = Path(out).expanduser()
    if path.is_dir():
        raise ExportFailed(f"cannot write the export to {path}: it is a directory", "give a file name, e.g. subject.json")
    if not path.parent.resolve().is_dir():
        raise ExportFailed(f"cannot write the export to {path}: the directory {path.parent} does not exist",
                           "create the directory first, or choose another --out")
    if path.exists() and not force:
        raise ExportFailed(f"{path} already exists; nothing was written",
                           "choose another --out, or pass --force to replace it")
    return path.parent.resolve() / path.name


def write_export(export: SubjectExport, out: str | os.PathLike, force: bool = False) -> Path:
    """Write the export atomically: a temporary file (mode 0600) in the same directory, synced,
    then renamed into place. A reader never sees half a file; without ``force`` an existing file
    is never replaced, even one that appeared while the rows were read."""
    final = check_out(out, force)
    document = json.dumps(export.to_dict(), indent=2, ensure_ascii=False) + "\n"
    try:
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")   # 0600
    except OSError as exc:
        raise ExportFailed(f"cannot write the export to {final}: {exc.strerror}",
                           "check the directory's permissions and free space") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(document)
            fh.flush()
            os.fsync(fh.fileno())
        if force:
            os.replace(tmp, final)
        else:
            try:
                os.link(tmp, final)      # create-only: fails if the name exists, never overwrites
            except FileExistsError:
                raise
            except OSError:              # a file system without hard links: check, then rename
                if final.exists():
                    raise FileExistsError(final) from None
                os.replace(tmp, final)
            else:
                os.unlink(tmp)
    except FileExistsError:
        Path(tmp).unlink(missing_ok=True)
        raise ExportFailed(f"{final} already exists; nothing was written",
                           "choose another --out, or pass --force to replace it") from None
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ExportFailed(f"cannot write the export to {final}: {exc.strerror}",
                           "check the directory's permissions and free space") from None
    try:
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass                             # best effort: the rename itself is done
    return final
