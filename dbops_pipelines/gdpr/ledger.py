"""The erasure ledger: which people cleanup erased, kept beside the backups so that a restore of an
older backup can erase them again.

One object per committed batch, ``ledger/<target>/<seq>-<UTC time>.aes``, written *before* the
batch commits (a batch whose ledger entry cannot be stored is rolled back: nobody is erased without
a record). Each object is JSON encrypted and authenticated with the backup key (the chunked
AES-GCM of backups), and names its target, its sequence number and the SHA-256 of the previous
object as stored: an altered, forged, moved, renamed or removed entry fails verification. The
newest sequence number is also recorded in the target's audit schema with each batch, so losing
the newest objects is noticed by the next cleanup too.

An entry holds the erased rows' primary keys (as text) and, per table, how many rows went with
them: re-application removes the same people again and follows the same foreign keys in the
restored copy. Create-only writes and a per-target advisory lock keep the chain single-file.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from dbops_pipelines.backup.crypto import BackupKey, decrypt_stream, encrypt_stream
from dbops_pipelines.errors import IntegrityError
from dbops_pipelines.storage.base import BackupStore
from dbops_pipelines.storage.namespaces import LEDGER

FORMAT = "dbops-erasure-ledger"
VERSION = 1
# Entries are re-applied from this long before a backup started: a batch's time is when its
# transaction began, and a batch that began before the dump's snapshot may have committed after
# it. Re-applying an erasure twice changes nothing.
REAPPLY_MARGIN = timedelta(hours=1)
_NAME = re.compile(r"(?P<seq>\d{12})-(?P<at>\d{8}T\d{12}Z)\.aes")
STAMP = "%Y%m%dT%H%M%S%fZ"


@dataclass(frozen=True)
class LedgerEntry:
    seq: int
    at: datetime                      # when the batch's transaction began (UTC)
    run_id: str
    table: str                        # the soft-deletable table whose rows were erased
    keys: list[list[str]]             # their primary keys, as text
    rows: dict[str, dict[str, int]]   # table -> action (delete | anonymize) -> rows
    sha256: str = ""                  # of the object as stored: the next entry names it
    prev_sha256: str = ""             # of the entry before it ("" for the first)

    def summary(self) -> dict:
        return {"seq": self.seq, "at": self.at.isoformat(), "run_id": self.run_id, "table": self.table,
                "people": len(self.keys), "rows": self.rows}


@dataclass
class LedgerReading:
    entries: list[LedgerEntry]        # oldest first
    total: int                        # entries in the whole ledger
    checked: int                      # objects read and authenticated (the entries plus their anchor)
    notes: list[str] = field(default_factory=list)


def prefix(target: str) -> str:
    return f"{LEDGER}{target}/"


def _object_key(target: str, seq: int, at: datetime) -> str:
    return f"{prefix(target)}{seq:012d}-{at.astimezone(timezone.utc).strftime(STAMP)}.aes"


def _index(store: BackupStore, target: str) -> list[tuple[int, datetime, str]]:
    """Every ledger object of ``target`` by its name, checked to number 1..n without a gap."""
    found = []
    for info in store.list(prefix(target)):
        m = _NAME.fullmatch(info.key[len(prefix(target)):])
        if not m:
            raise IntegrityError(f"the erasure ledger of {target} holds an object it did not write: {info.key}",
                                 "find out who wrote it and move it out of the ledger's prefix; nothing was changed")
        found.append((int(m["seq"]), datetime.strptime(m["at"], STAMP).replace(tzinfo=timezone.utc), info.key))
    found.sort()
    for expected, (seq, _, key) in enumerate(found, start=1):
        if seq != expected:
            raise IntegrityError(
                f"the erasure ledger of {target} is broken: entry {expected} is missing (found {key} instead)",
                "an entry was removed from the store: restore it from the store's versions or a copy; until then "
                "erasures cannot be proven or re-applied (nothing was changed)")
    return found


def _open(store: BackupStore, keys: list[BackupKey], target: str, seq: int, at: datetime, key: str) -> LedgerEntry:
    label = f"erasure ledger entry {key}"
    data = store.get_bytes(key)
    plain = b"".join(decrypt_stream([data], keys, label))     # authenticated, or IntegrityError / key error
    doc = json.loads(plain)
    if (doc.get("format"), doc.get("target"), doc.get("seq")) != (FORMAT, target, seq) \
            or datetime.fromisoformat(doc["at"]) != at:
        raise IntegrityError(f"{label} does not belong where it was found (it names target {doc.get('target')!r}, "
                             f"entry {doc.get('seq')})", "do not trust this ledger; check who can write to the store")
    return LedgerEntry(seq, at, doc["run_id"], doc["table"], doc["keys"], doc["rows"],
                       hashlib.sha256(data).hexdigest(), doc["prev_sha256"])


def read_ledger(store: BackupStore, keys: list[BackupKey], target: str, since: datetime | None = None) -> LedgerReading:
    """The entries of ``target`` from ``since`` on (all without it), each authenticated and
    chained to the one before; the entry just before the first one read anchors the chain."""
    index = _index(store, target)
    start = 0 if since is None else next((i for i, (_, at, _) in enumerate(index) if at >= since), len(index))
    opened = [_open(store, keys, target, *item) for item in index[max(start - 1, 0):]]
    for before, after in zip(opened, opened[1:]):
        if after.prev_sha256 != before.sha256:
            raise IntegrityError(f"the erasure ledger of {target} is broken between entries {before.seq} and {after.seq}: "
                                 "an entry was replaced", "do not trust this ledger; restore the entry from the store's versions")
    if opened and start == 0 and opened[0].prev_sha256 != "":
        raise IntegrityError(f"the erasure ledger of {target} does not start at its first entry",
                             "entries were removed from the store: restore them from the store's versions")
    entries = opened[1:] if start > 0 else opened
    return LedgerReading(entries, len(index), len(opened))


class LedgerWriter:
    """Appends entries for one run. Opened once per run (under the cleanup's advisory lock): it
    authenticates the newest entry to continue the chain from it."""

    def __init__(self, store: BackupStore, target: str, key: BackupKey, read_keys: list[BackupKey]):
        self.store, self.target, self.key = store, target, key
        index = _index(store, target)
        self.seq, self.prev = 0, ""
        if index:
            last = _open(store, read_keys, target, *index[-1])
            self.seq, self.prev = last.seq, last.sha256

    def append(self, run_id: str, at: datetime, table: str, keys: list[list[str]], rows: dict[str, dict[str, int]]) -> int:
        seq = self.seq + 1
        at = at.astimezone(timezone.utc)
        doc = {"format": FORMAT, "version": VERSION, "target": self.target, "seq": seq, "at": at.isoformat(),
               "prev_sha256": self.prev, "run_id": run_id, "table": table, "keys": keys, "rows": rows}
        data = b"".join(encrypt_stream([json.dumps(doc).encode()], self.key))
        stored = self.store.put_bytes(_object_key(self.target, seq, at), data)   # create-only: never replaces
        self.seq, self.prev = seq, stored.sha256
        return seq
