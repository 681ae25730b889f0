"""Watching pg_basebackup's tar stream as it passes (TarWatch), and the facts read from it:
backup_label, backup_manifest's WAL-Ranges, pg_control's system identifier (see the package
docstring)."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dbops_pipelines.errors import BackupFailed
from dbops_pipelines.wal.naming import parse_lsn

_TAIL = 1 << 20                # how much of backup_manifest's end is kept to read its WAL-Ranges


class TarWatch:
    """Follows a tar stream fed in arbitrary pieces, reading only its 512-byte headers and
    skipping member data by counting, except for the few members it keeps (backup_label, the
    start of global/pg_control, backup_manifest's sha256 and tail). ustar, GNU long names and
    pax headers; raises BackupFailed on anything that is not a tar stream."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._header = bytearray()
        self._data_left = 0          # bytes of the current member's data still to come
        self._pad_left = 0           # then its padding to the next 512 boundary
        self._sink: Callable[[memoryview], None] | None = None
        self._long_name: str | None = None
        self._pax_path: str | None = None
        self._meta: bytearray | None = None   # data of a GNU 'L' or pax 'x' member being read
        self._meta_kind = b""
        self.ended = False
        self.files = 0
        self.backup_label = bytearray()
        self.pg_control = bytearray()
        self.manifest_sha = hashlib.sha256()
        self.manifest_bytes = 0
        self.manifest_tail = bytearray()
        self.manifest_seen = False
        self.label_seen = False
        self.first_wal_at: float | None = None   # time.time() when the first pg_wal/ file passed
        self.tablespace_links: list[str] = []

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        pos, n = 0, len(view)
        while pos < n:
            if self._data_left:
                take = min(self._data_left, n - pos)
                if self._sink:
                    self._sink(view[pos:pos + take])
                pos += take
                self._data_left -= take
                if not self._data_left:
                    self._member_done()
            elif self._pad_left:
                take = min(self._pad_left, n - pos)
                pos += take
                self._pad_left -= take
            else:
                take = min(512 - len(self._header), n - pos)
                self._header += view[pos:pos + take]
                pos += take
                if len(self._header) == 512:
                    block = bytes(self._header)
                    self._header.clear()
                    self._on_header(block)

    def _on_header(self, h: bytes) -> None:
        if h == b"\0" * 512:
            self.ended = True
            return
        if self.ended:
            raise BackupFailed("pg_basebackup's output has data after the end of its tar archive", REPORT)
        try:
            checksum_ok = int(h[148:156].strip(b"\0 "), 8) == sum(h[:148]) + 8 * 32 + sum(h[156:])
            size = _tar_number(h[124:136])
        except ValueError:
            checksum_ok = False
        if not checksum_ok:
            raise BackupFailed("pg_basebackup's output is not a tar stream (a header fails its checksum)", REPORT)
        kind = h[156:157]
        name = h[:100].split(b"\0", 1)[0]
        if h[257:262] == b"ustar" and h[345] != 0:
            name = h[345:500].split(b"\0", 1)[0] + b"/" + name
        path = self._long_name or self._pax_path or name.decode("utf-8", "replace")
        self._long_name = self._pax_path = None
        self._sink = None
        if kind in (b"L", b"x"):
            self._meta, self._meta_kind = bytearray(), kind
            self._sink = self._keep_meta
        elif kind in (b"0", b"\0", b"7"):
            self.files += 1
            if path == "backup_label":
                self.label_seen = True
                self._sink = self._keep_label
            elif path == "backup_manifest":
                self.manifest_seen = True
                self._sink = self._keep_manifest
            elif path == "global/pg_control":
                self._sink = self._keep_control
            elif path.startswith("pg_wal/") and self.first_wal_at is None:
                self.first_wal_at = self._clock()
        elif kind == b"2" and path.startswith("pg_tblspc/"):
            self.tablespace_links.append(path)
        self._data_left = size
        self._pad_left = -size % 512
        if not size:
            self._member_done()

    def _member_done(self) -> None:
        if self._meta is not None:
            text = self._meta.decode("utf-8", "replace")
            if self._meta_kind == b"L":
                self._long_name = text.rstrip("\0")
            else:
                m = re.search(r"\d+ path=([^\n]*)\n", text)
                self._pax_path = m[1] if m else None
            self._meta = None
        self._sink = None

    def _keep_meta(self, piece: memoryview) -> None:
        if len(self._meta) + len(piece) > 1 << 20:
            raise BackupFailed("pg_basebackup's output has an oversized tar extension header", REPORT)
        self._meta += piece

    def _keep_label(self, piece: memoryview) -> None:
        if len(self.backup_label) + len(piece) > 1 << 20:
            raise BackupFailed("the backup_label in pg_basebackup's output is implausibly large", REPORT)
        self.backup_label += piece

    def _keep_control(self, piece: memoryview) -> None:
        if len(self.pg_control) < 16:
            self.pg_control += piece[:16 - len(self.pg_control)]

    def _keep_manifest(self, piece: memoryview) -> None:
        self.manifest_sha.update(piece)
        self.manifest_bytes += len(piece)
        self.manifest_tail += piece
        if len(self.manifest_tail) > 2 * _TAIL:
            del self.manifest_tail[:-_TAIL]


REPORT = "this is unexpected of pg_basebackup: check its version and report it; nothing was kept"


def _tar_number(field_: bytes) -> int:
    if field_[0] & 0x80:   # base-256, for members of 8 GiB and more
        return int.from_bytes(field_, "big") & ~(0xFF << (8 * (len(field_) - 1)))
    text = field_.strip(b"\0 ")
    return int(text, 8) if text else 0


@dataclass(frozen=True)
class _StreamFacts:
    label: dict[str, str]
    wal_ranges: list[dict]
    system_identifier: int


def _label_fields(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _system_identifier(control: bytes) -> int:
    """pg_control starts with the system identifier (uint64) and pg_control_version (uint32) in
    the server's byte order; the version (a few thousand) tells which order that is."""
    for order in ("little", "big"):
        if 900 <= int.from_bytes(control[8:12], order) < 100000:
            return int.from_bytes(control[:8], order)
    raise BackupFailed("global/pg_control in pg_basebackup's output cannot be read", REPORT)


def stream_facts(watch: TarWatch) -> _StreamFacts:
    missing = [what for what, ok in (("backup_label", watch.label_seen), ("global/pg_control", len(watch.pg_control) >= 16),
                                     ("backup_manifest", watch.manifest_seen), ("the end of the archive", watch.ended)) if not ok]
    if missing:
        raise BackupFailed(f"pg_basebackup's output lacks {', '.join(missing)}; nothing was kept",
                           "make sure nothing in PGOPTIONS or the environment disables the backup manifest, and report it if it persists")
    label = _label_fields(watch.backup_label.decode("utf-8", "replace"))
    tail = watch.manifest_tail.decode("utf-8", "replace")
    m = re.search(r'"WAL-Ranges"\s*:\s*(\[.*?\])', tail, re.S)
    try:
        ranges = json.loads(m[1]) if m else []
        for r in ranges:
            parse_lsn(r["Start-LSN"]), parse_lsn(r["End-LSN"]), int(r["Timeline"])
    except (ValueError, KeyError, TypeError):
        ranges = []
    if not ranges or "START WAL LOCATION" not in label or "START TIMELINE" not in label:
        raise BackupFailed("the backup's start and stop positions cannot be read from backup_label and backup_manifest; "
                           "nothing was kept", REPORT)
    return _StreamFacts(label, ranges, _system_identifier(bytes(watch.pg_control)))


def label_time(text: str | None) -> datetime | None:
    """START TIME is written in the server's log_timezone: "2026-12-01 21:40:35 UTC" (or CET,
    +03, Europe/Paris...). None when the zone cannot be read unambiguously."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (\S+)", (text or "").strip())
    if not m:
        return None
    when = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S")
    zone = m[2]
    if zone in ("UTC", "GMT", "UCT", "Z"):
        return when.replace(tzinfo=timezone.utc)
    off = re.fullmatch(r"([+-])(\d\d):?(\d\d)?", zone)
    if off:
        delta = timedelta(hours=int(off[2]), minutes=int(off[3] or 0))
        return when.replace(tzinfo=timezone(delta if off[1] == "+" else -delta)).astimezone(timezone.utc)
    try:
        return when.replace(tzinfo=ZoneInfo(zone)).astimezone(timezone.utc)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None
