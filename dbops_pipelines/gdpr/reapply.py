"""Re-applying the erasure ledger to a database restored from an older backup: every person erased
since the backup was taken is erased again, with what belongs to them, by the same rules as the
cleanup that erased them first (the foreign keys of the restored copy, the configured
anonymization). No grace check: these people are already gone from production.

Each entry names its table's key columns and types: the rows are found by those, and an entry
whose key no longer matches the copy's table is refused, never guessed (a key taken by the wrong
columns would erase someone else). A chunk the database refuses is retried person by person, so
one refusal leaves only that person behind, reported. The configuration may be newer than the
backup: configured tables missing from the copy are left out of the catalog, noted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import psycopg

from dbops_pipelines.backup.snapshot import canonical_table
from dbops_pipelines.config import GdprSettings
from dbops_pipelines.errors import ConfigError, DbopsError
from dbops_pipelines.gdpr.anonymize import hash_secret
from dbops_pipelines.gdpr.catalog import GdprCatalog, Table, column_types, discover, table_named
from dbops_pipelines.gdpr.cleanup import erase_rows, set_timeouts, why_not
from dbops_pipelines.gdpr.ledger import LedgerEntry


@dataclass
class ReapplyResult:
    target: str
    since: datetime | None
    entries: int = 0
    people: int = 0                                       # keys in the entries (re-)erased or already gone
    removed: Counter = field(default_factory=Counter)    # (table, action) -> rows changed now
    blocked: list[dict] = field(default_factory=list)    # {"seq", "table", "people", "why"}: NOT re-applied
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.blocked

    def summary(self) -> str:
        rows = sum(self.removed.values())
        text = (f"re-applied {self.entries} erasure ledger entries ({self.people} people) recorded since "
                f"{self.since.isoformat(timespec='seconds') if self.since else 'the start'}: {rows} rows changed")
        return text + (f"; {sum(b['people'] for b in self.blocked)} people could NOT be erased again" if self.blocked else "")

    def to_dict(self) -> dict:
        return {"target": self.target, "since": self.since.isoformat() if self.since else None, "entries": self.entries,
                "people": self.people, "complete": self.complete, "blocked": self.blocked, "notes": self.notes,
                "tables": [{"table": t, "action": a, "rows": n} for (t, a), n in sorted(self.removed.items())]}


def _copy_catalog(conn: psycopg.Connection, settings: GdprSettings, notes: list[str]) -> GdprCatalog | None:
    """The catalog of the restored copy under today's configuration, leaving out configured
    tables the copy does not have (the backup predates them); None when even that fails (no
    subject table, no foreign keys to follow: a partial restore)."""
    try:
        return discover(conn, settings)
    except ConfigError:
        pass
    present = {name for name in [*settings.tables, *settings.exclude] if _exists(conn, name)}
    lenient = settings.model_copy(update={"tables": {n: t for n, t in settings.tables.items() if n in present},
                                          "exclude": [n for n in settings.exclude if n in present]})
    gone = sorted((set(settings.tables) | set(settings.exclude)) - present)
    try:
        catalog = discover(conn, lenient)
    except ConfigError as exc:
        notes.append(f"the restored copy does not fit the gdpr configuration ({exc.message}): rows that belong to "
                     "the people erased cannot be followed by foreign keys")
        return None
    if gone:
        notes.append(f"configured tables not in the restored copy, left out: {', '.join(gone)}")
    return catalog


def _exists(conn: psycopg.Connection, name: str) -> bool:
    try:
        table_named(conn, name, "")
        return True
    except ConfigError:
        return False


def _entry_table(conn: psycopg.Connection, entry: LedgerEntry) -> Table | str:
    """The entry's table in this database, keyed as the entry says; or why it cannot be."""
    try:
        table = table_named(conn, entry.table, "")
    except ConfigError:
        return "missing"
    types = column_types(conn, table.oid)
    if not entry.key_columns or any(types.get(c) != t for c, t in zip(entry.key_columns, entry.key_types)):
        return (f"its key ({', '.join(entry.key_columns) or 'unknown'}) is not a column of {entry.table} with the same "
                "type in this database: the rows cannot be told apart safely")
    return Table(table.name, table.oid, entry.key_columns, table.soft_delete, entry.key_types)


def reapply(conn: psycopg.Connection, target: str, settings: GdprSettings, entries: list[LedgerEntry],
            since: datetime | None, partial: bool = False, log: Callable[[str], None] = lambda line: None) -> ReapplyResult:
    """Erase again the people of ``entries`` (oldest first) in ``conn``'s database (autocommit:
    one short transaction per chunk of keys, like cleanup's batches). ``partial``: only some
    tables were restored, so an entry's table missing here is a note, not a failure."""
    secret = hash_secret(settings)
    result = ReapplyResult(target, since)
    catalog = _copy_catalog(conn, settings, result.notes)
    stub = catalog or GdprCatalog(Table(canonical_table(settings.subject_table), 0, (), False), [], {})
    for entry in entries:
        result.entries += 1
        result.people += len(entry.keys)
        table = _entry_table(conn, entry)
        if table == "missing" and partial:
            result.notes.append(f"{entry.table} is not in this partial restore: ledger entry {entry.seq} has nothing here")
            continue
        if isinstance(table, str):
            result.blocked.append({"seq": entry.seq, "table": entry.table, "people": len(entry.keys),
                                   "why": "the table is not in this database" if table == "missing" else table})
            continue
        if table.name == stub.subject.name and catalog is None and not partial:
            result.blocked.append({"seq": entry.seq, "table": entry.table, "people": len(entry.keys),
                                   "why": "the foreign keys of the restored copy cannot be followed (see the notes)"})
            continue
        keys = [tuple(k) for k in entry.keys]
        before = len(result.blocked)
        for start in range(0, len(keys), settings.batch_size):
            _chunk(conn, stub, table, settings, entry, keys[start:start + settings.batch_size], secret, result)
        log(f"ledger entry {entry.seq} ({entry.table}, {len(keys)} people): "
            + ("re-applied" if len(result.blocked) == before else "NOT fully re-applied"))
    return result


def _attempt(conn: psycopg.Connection, catalog: GdprCatalog, table: Table, settings: GdprSettings, entry: LedgerEntry,
             keys: list[tuple], secret: bytes | None, result: ReapplyResult) -> str | None:
    """Erase ``keys`` again in one transaction; None when done, else why the database refused."""
    try:
        with conn.transaction():
            set_timeouts(conn, settings)
            done, _ = erase_rows(conn, catalog, table, settings, None, keys, secret)
    except psycopg.Error as exc:
        if conn.broken:
            raise DbopsError(f"lost the connection to the database while re-applying ledger entry {entry.seq}",
                             "check the server and run `dbops gdpr reapply` again") from None
        return why_not(exc)
    result.removed.update(done)
    return None


def _chunk(conn: psycopg.Connection, catalog: GdprCatalog, table: Table, settings: GdprSettings, entry: LedgerEntry,
           keys: list[tuple], secret: bytes | None, result: ReapplyResult) -> None:
    """One transaction for the chunk; if the database refuses it, one per person, and only the
    people it refuses are left, reported."""
    why = _attempt(conn, catalog, table, settings, entry, keys, secret, result)
    if why is None:
        return
    for key in keys if len(keys) > 1 else []:
        why = _attempt(conn, catalog, table, settings, entry, [key], secret, result)
        if why is not None:
            result.blocked.append({"seq": entry.seq, "table": entry.table, "people": 1, "keys": [list(key)], "why": why})
    if len(keys) == 1:
        result.blocked.append({"seq": entry.seq, "table": entry.table, "people": 1, "keys": [list(keys[0])], "why": why})
