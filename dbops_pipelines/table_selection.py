"""Restore some tables of a backup, exactly: pick their entries from the archive's table of
contents by exact schema and name (backup/toc.py) and give pg_restore that list (--use-list).

pg_restore's own --schema/--table options match independently of each other (a.x + b.y would
also bring a.y and b.x), skip a partitioned table's partitions, and restore nothing, with
success, when nothing matches: none of that can happen with an explicit list.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator

import psycopg
from psycopg import sql

from dbops_pipelines.backup.snapshot import NAMING_HINT, near_misses, qualified, split_table
from dbops_pipelines.backup.toc import Toc, read_toc
from dbops_pipelines.errors import RestoreFailed

# What pg_restore --table selects: relations by name, with their data...
RELATIONS = frozenset({"TABLE", "VIEW", "MATERIALIZED VIEW", "FOREIGN TABLE", "SEQUENCE"})
DATA = frozenset({"TABLE DATA", "MATERIALIZED VIEW DATA", "SEQUENCE SET"})  # named like their relation
# ...and the grants, comments and labels of what it restores (pg_backup_archiver.c: _tocEntryRequired).
FOLLOWERS = frozenset({"ACL", "COMMENT", "SECURITY LABEL"})
SHOWN = 30  # available tables named in an error


class TableSelection:
    """The archive entries to restore, in archive order, in the file pg_restore --use-list reads.
    The file is private (0600) and removed when this object is closed or collected."""

    def __init__(self, dump_ids: Iterable[int]):
        self.dump_ids = tuple(dump_ids)
        self._file = tempfile.NamedTemporaryFile("w", prefix="dbops-restore-", suffix=".list")
        self._file.write("".join(f"{i}\n" for i in self.dump_ids))
        self._file.flush()

    @property
    def list_path(self) -> str:
        return self._file.name

    def close(self) -> None:
        self._file.close()


def parse_selection(tables: Iterable[str]) -> list[tuple[str, str]]:
    """(schema, table) of each name, refusing names that cannot be a table, before anything is read."""
    parsed = []
    for name in tables:
        schema, table = split_table(name)
        if not schema or not table:
            raise RestoreFailed(f"{name!r} is not a table name", f"name tables as {NAMING_HINT}")
        parsed.append((schema, table))
    return parsed


def select_entries(toc: Toc, tables: Iterable[str]) -> list[int]:
    """Dump ids restoring ``tables`` as pg_restore --table would, plus the partitions of a
    partitioned table; RestoreFailed naming what the archive has if a table is not in it."""
    relations = {(e.namespace, e.tag): e for e in toc.entries if e.desc in RELATIONS}
    wanted = parse_selection(tables)
    missing = [qualified(*w) for w in wanted if w not in relations]
    if missing:
        have = sorted(qualified(*r) for r, e in relations.items() if e.desc == "TABLE")
        shown = ", ".join(have[:SHOWN]) + (f" and {len(have) - SHOWN} more" if len(have) > SHOWN else "")
        raise RestoreFailed(f"the backup has no table {', '.join(missing)}{near_misses(missing, have)}; "
                            f"it has {shown or 'no tables'}", f"name tables as {NAMING_HINT}")
    chosen = {relations[w].dump_id for w in wanted}
    # A TABLE ATTACH entry is named after its partition and depends on the partition and its
    # parent: follow them down from chosen parents, through sub-partitions too.
    attaches = [e for e in toc.entries if e.desc == "TABLE ATTACH" and (e.namespace, e.tag) in relations]
    grown = True
    while grown:
        grown = False
        for e in attaches:
            part = relations[(e.namespace, e.tag)].dump_id
            if e.dump_id not in chosen and any(d in chosen and d != part for d in e.deps):
                chosen |= {e.dump_id, part}
                grown = True
    names = {(e.namespace, e.tag) for e in toc.entries if e.dump_id in chosen and e.desc in RELATIONS}
    chosen |= {e.dump_id for e in toc.entries if e.desc in DATA and (e.namespace, e.tag) in names}
    chosen |= {e.dump_id for e in toc.entries if e.desc in FOLLOWERS and any(d in chosen for d in e.deps)}
    return [e.dump_id for e in toc.entries if e.dump_id in chosen]


def select_tables(chunks: Iterator[bytes], tables: Iterable[str], label: str) -> tuple[Iterator[bytes], TableSelection | None]:
    """For a table restore, read the TOC at the start of the stream and choose the entries; the
    returned stream is the whole archive again, for pg_restore. No tables: (chunks, None)."""
    tables = list(tables)
    if not tables:
        return chunks, None
    toc, stream = read_toc(chunks, label)
    return stream, TableSelection(select_entries(toc, tables))


def create_schemas(dsn: str, tables: Iterable[str]) -> None:
    """Create the schemas of ``tables`` where missing: an archive of a 'tables' backup holds no
    CREATE SCHEMA (pg_dump --table dumps the tables alone), so an empty database needs them first."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for schema in sorted({split_table(t)[0] for t in tables}):
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
