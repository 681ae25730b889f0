"""Re-applying the erasure ledger to a database restored from an older backup: every person erased
since the backup was taken is erased again, with what belongs to them, by the same rules as the
cleanup that erased them first (the foreign keys of the restored copy, the configured
anonymization). No grace check: these people are already gone from production. Erasing someone
twice changes nothing, so re-applying more than needed is harmless; a refusal is reported, never
skipped silently.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import psycopg

from dbops_pipelines.config import GdprSettings
from dbops_pipelines.errors import ConfigError
from dbops_pipelines.gdpr.anonymize import hash_secret
from dbops_pipelines.gdpr.catalog import GdprCatalog, Table, table_named
from dbops_pipelines.gdpr.cleanup import erase_rows, set_timeouts, why_not
from dbops_pipelines.gdpr.ledger import LedgerEntry

REFUSALS = (psycopg.errors.IntegrityError, psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled,
            psycopg.errors.DeadlockDetected)
ATTEMPTS = 3


@dataclass
class ReapplyResult:
    target: str
    since: datetime | None
    entries: int = 0
    people: int = 0                                       # keys in the entries (re-)erased or already gone
    removed: Counter = field(default_factory=Counter)    # (table, action) -> rows changed now
    blocked: list[dict] = field(default_factory=list)    # {"seq", "table", "why"}: erasures NOT re-applied
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.blocked

    def summary(self) -> str:
        rows = sum(self.removed.values())
        text = (f"re-applied {self.entries} erasure ledger entries ({self.people} people) recorded since "
                f"{self.since.isoformat(timespec='seconds') if self.since else 'the start'}: {rows} rows changed")
        return text + (f"; {len(self.blocked)} entries could NOT be re-applied" if self.blocked else "")

    def to_dict(self) -> dict:
        return {"target": self.target, "since": self.since.isoformat() if self.since else None, "entries": self.entries,
                "people": self.people, "complete": self.complete, "blocked": self.blocked, "notes": self.notes,
                "tables": [{"table": t, "action": a, "rows": n} for (t, a), n in sorted(self.removed.items())]}


def reapply(conn: psycopg.Connection, target: str, catalog: GdprCatalog, settings: GdprSettings,
            entries: list[LedgerEntry], since: datetime | None,
            log: Callable[[str], None] = lambda line: None) -> ReapplyResult:
    """Erase again the people of ``entries`` (oldest first) in ``conn``'s database (autocommit:
    one short transaction per chunk of keys, like cleanup's batches)."""
    secret = hash_secret(settings)
    result = ReapplyResult(target, since)
    tables: dict[str, Table | None] = {t.name: t for t in catalog.soft_deletable}
    for entry in entries:
        result.entries += 1
        result.people += len(entry.keys)
        if entry.table not in tables:
            try:
                tables[entry.table] = table_named(conn, entry.table, settings.soft_delete_column)
            except ConfigError:       # not in this database (a partial restore): nothing of it to erase
                tables[entry.table] = None
                result.notes.append(f"{entry.table} is not in this database: its erasures have nothing to remove here")
        table = tables[entry.table]
        if table is None:
            continue
        if not table.primary_key:
            result.blocked.append({"seq": entry.seq, "table": entry.table, "people": len(entry.keys),
                                   "why": "the table has no primary key in this database"})
            continue
        keys = [tuple(k) for k in entry.keys]
        for start in range(0, len(keys), settings.batch_size):
            _reapply_chunk(conn, catalog, table, settings, entry, keys[start:start + settings.batch_size], secret, result)
        log(f"ledger entry {entry.seq} ({entry.table}, {len(keys)} people): re-applied")
    return result


def _reapply_chunk(conn, catalog, table, settings, entry, keys, secret, result: ReapplyResult) -> None:
    for attempt in range(ATTEMPTS):
        try:
            with conn.transaction():
                set_timeouts(conn, settings)
                done, _ = erase_rows(conn, catalog, table, settings, None, keys, secret)
            result.removed.update(done)
            return
        except REFUSALS as exc:
            refusal = why_not(exc)
            if isinstance(exc, psycopg.errors.IntegrityError):
                break                    # a rule of this database refuses: trying again changes nothing
    result.blocked.append({"seq": entry.seq, "table": entry.table, "people": len(keys), "why": refusal})
