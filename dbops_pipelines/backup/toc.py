"""Read the table of contents of a pg_dump custom-format archive from the start of its stream.

``pg_restore --list`` prints names unquoted and with newlines turned into spaces, so "public" +
"a b" and "public a" + "b" look the same there. The archive itself stores every entry's desc,
schema and name as length-prefixed strings (pg_backup_archiver.c: WriteHead, WriteToc), so
reading them here is exact for any identifier. When written to a pipe, as our backups are, the
TOC comes right after the header, before any data.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property

from psycopg import NotSupportedError
from psycopg._encodings import pg2pyenc

from dbops_pipelines.errors import IntegrityError

MAGIC = b"PGDMP"
CUSTOM_FORMAT = 1
MIN_VERSION, MAX_VERSION = (1, 12, 0), (1, 16, 0)  # the layouts read below; pg_dump 15 writes 1.14, 17 writes 1.16


@dataclass(frozen=True)
class TocEntry:
    dump_id: int
    desc: str                   # "TABLE", "TABLE DATA", "TABLE ATTACH", "SCHEMA", ...
    namespace: str | None       # the schema; None for objects outside schemas
    tag: str                    # the object's name (for TABLE ATTACH: the partition's)
    deps: tuple[int, ...]       # dump ids this entry depends on


@dataclass(frozen=True)
class Toc:
    version: tuple[int, int, int]
    entries: tuple[TocEntry, ...]

    @cached_property
    def _by_name(self) -> dict[tuple[str, str | None, str], TocEntry]:
        return {(e.desc, e.namespace, e.tag): e for e in self.entries}

    def find(self, desc: str, schema: str, name: str) -> TocEntry | None:
        return self._by_name.get((desc, schema, name))


class _Reader:
    """Pull bytes from the stream as the parser needs them, keeping everything read for replay."""

    def __init__(self, chunks: Iterable[bytes], label: str):
        self._chunks = iter(chunks)
        self.label = label
        self.buf = bytearray()
        self.pos = 0
        self.int_size = 4

    def take(self, n: int) -> bytes:
        while len(self.buf) - self.pos < n:
            chunk = next(self._chunks, None)
            if chunk is None:
                raise self.bad("the archive ends inside it")
            self.buf += chunk
        out = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return out

    def byte(self) -> int:
        return self.take(1)[0]

    def integer(self) -> int:
        """A sign byte, then int_size bytes, least significant first (ReadInt)."""
        sign = self.byte()
        value = int.from_bytes(self.take(self.int_size), "little")
        return -value if sign else value

    def string(self) -> bytes | None:
        """A length (negative: NULL), then that many bytes (ReadStr)."""
        n = self.integer()
        if n < 0:
            return None
        if n > 1 << 30:
            raise self.bad(f"it has an implausible string length ({n})")
        return self.take(n)

    def bad(self, problem: str) -> IntegrityError:
        return IntegrityError(f"{self.label}: the archive's table of contents cannot be read: {problem}",
                              "restore from another backup; if the archive was written by a newer pg_dump, upgrade dbops")

    def rest(self) -> Iterator[bytes]:
        """The whole stream again: what was read, then what was not."""
        yield bytes(self.buf)
        yield from self._chunks


def read_toc(chunks: Iterable[bytes], label: str = "the backup") -> tuple[Toc, Iterator[bytes]]:
    """Parse the header and TOC at the start of ``chunks``; return it with an iterator over the
    complete stream (the bytes read here replayed first), to hand on to pg_restore."""
    r = _Reader(chunks, label)
    if r.take(5) != MAGIC:
        raise r.bad("it is not a pg_dump archive (no PGDMP magic)")
    version = (r.byte(), r.byte(), r.byte())
    if not MIN_VERSION <= version <= MAX_VERSION:
        raise r.bad(f"archive version {'.'.join(map(str, version))} is not supported")
    r.int_size, off_size, fmt = r.byte(), r.byte(), r.byte()
    if fmt != CUSTOM_FORMAT or not 1 <= r.int_size <= 8 or not 1 <= off_size <= 16:
        raise r.bad(f"unexpected format {fmt}, integer size {r.int_size} or offset size {off_size}")
    if version >= (1, 15, 0):
        r.byte()                # compression algorithm
    else:
        r.integer()             # compression level
    for _ in range(7):          # creation time: sec, min, hour, mday, mon, year, isdst
        r.integer()
    for _ in range(3):          # database name, server version, pg_dump version
        r.string()
    count = r.integer()
    if count < 0:
        raise r.bad(f"it claims {count} entries")
    encoding, raw = "utf-8", []
    for _ in range(count):
        dump_id, _had_dumper = r.integer(), r.integer()
        if dump_id <= 0:
            raise r.bad(f"entry id {dump_id} is out of range")
        r.string(), r.string()  # catalog id: table oid, oid
        tag, desc = r.string(), r.string()
        r.integer()             # section
        defn = r.string()
        r.string(), r.string()  # drop statement, COPY statement
        namespace = r.string()
        r.string(), r.string()  # tablespace, table access method
        if version >= (1, 16, 0):
            r.integer()         # relkind
        r.string(), r.string()  # owner, "false" (WITH OIDS)
        deps = []
        while (dep := r.string()) is not None:
            if not dep.isdigit():
                raise r.bad(f"entry {dump_id} has a dependency {dep[:20]!r}")
            deps.append(int(dep))
        r.take(1 + off_size)    # custom format: data offset flag and position
        if desc == b"ENCODING" and defn:
            encoding = _codec(defn)
        raw.append((dump_id, desc, namespace, tag, tuple(deps)))

    def text(b: bytes | None) -> str | None:
        return None if b is None else b.decode(encoding, errors="surrogateescape")

    entries = tuple(TocEntry(d, text(desc) or "", text(ns), text(tag) or "", deps) for d, desc, ns, tag, deps in raw)
    return Toc(version, entries), r.rest()


def _codec(defn: bytes) -> str:
    """The Python codec of ``SET client_encoding = 'UTF8';``: names are in the dump's encoding."""
    name = defn.split(b"'")[1] if defn.count(b"'") >= 2 else b"UTF8"
    try:
        return pg2pyenc(name)
    except NotSupportedError:  # an encoding Python lacks (MULE_INTERNAL): keep the bytes via surrogateescape
        return "utf-8"
