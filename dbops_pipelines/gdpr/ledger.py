"""The erasure ledger: which people cleanup erased, kept beside the backups so that a restore of an
older backup can erase them again.

One object per entry, ``ledger/<target>/<seq>.aes``, numbered 1, 2, 3... Each is JSON encrypted
and authenticated with the backup key (the chunked AES-GCM of backups) and names its target, its
number and the SHA-256 of the entry before it as stored: an altered, forged, moved, renamed,
replaced or removed entry fails verification. Names carry only the number, so a second writer
that raced for the same number is refused by the store's create-only write (its batch rolls back).

Two kinds of entry:
- ``erasure``, one per batch, stored *before* the batch commits (a batch whose entry cannot be
  stored is rolled back: nobody is erased without a record): the table, its key columns and
  types, the keys of the rows erased (as text), the rows per table that went with them, and the
  batch's transaction id.
- ``outcome``: which earlier erasure entries belong to batches that did NOT commit (refused at
  commit, or killed between the store and the commit), found with ``pg_xact_status`` of their
  transaction ids; written at the end of every run and, for what a killed run left open, at the
  start of the next. Re-application skips those entries: a batch that never committed erased
  nobody, and that person may since have been undeleted.

The newest entry number is also recorded in the target's audit schema (audit.py): losing the
newest entries is noticed by the next cleanup, and by restores that can reach the target.
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
# Entries are re-applied from this long before a backup started: an entry's time is taken in its
# batch's transaction, which may have committed after the dump's snapshot was taken, and the
# clocks of the database and the backup host may differ. Erasing someone twice changes nothing.
REAPPLY_MARGIN = timedelta(hours=1)
_NAME = re.compile(r"(?P<seq>\d{12})\.aes")
_BROKEN_HINT = ("do not trust this ledger: find out who can write to the store's ledger/ prefix, restore the entry from "
                "the bucket's object versions or a copy, and run `dbops gdpr ledger TARGET` until it passes")


@dataclass(frozen=True)
class LedgerEntry:
    seq: int
    kind: str                          # erasure | outcome
    at: datetime                       # the database's clock in the batch's transaction (UTC)
    run_id: str
    table: str = ""                    # erasure: the table whose rows were erased
    key_columns: tuple[str, ...] = ()  # erasure: its primary key then, in order
    key_types: tuple[str, ...] = ()
    keys: tuple[tuple[str, ...], ...] = ()   # erasure: the erased rows' keys, as text
    rows: dict = field(default_factory=dict)  # erasure: table -> action (delete | anonymize) -> rows
    txid: str = ""                     # erasure: the batch's transaction id (pg_current_xact_id)
    void: tuple[int, ...] = ()         # outcome: erasure entries whose batch did not commit
    sha256: str = ""                   # of the object as stored: the next entry names it
    prev_sha256: str = ""

    def summary(self) -> dict:
        if self.kind == "outcome":
            return {"seq": self.seq, "kind": self.kind, "at": self.at.isoformat(), "void": list(self.void)}
        return {"seq": self.seq, "kind": self.kind, "at": self.at.isoformat(), "run_id": self.run_id,
                "table": self.table, "people": len(self.keys), "rows": self.rows}


@dataclass
class LedgerReading:
    entries: list[LedgerEntry]         # oldest first, every kind
    total: int                         # entries in the whole ledger
    checked: int                       # objects read and authenticated
    notes: list[str] = field(default_factory=list)

    @property
    def voided(self) -> set[int]:
        return {seq for e in self.entries if e.kind == "outcome" for seq in e.void}

    @property
    def erasures(self) -> list[LedgerEntry]:
        """The erasure entries to re-apply: all but those of batches known not to have committed."""
        void = self.voided
        return [e for e in self.entries if e.kind == "erasure" and e.seq not in void]


def prefix(target: str) -> str:
    return f"{LEDGER}{target}/"


def _object_key(target: str, seq: int) -> str:
    return f"{prefix(target)}{seq:012d}.aes"


def _index(store: BackupStore, target: str) -> int:
    """The number of entries, after checking their names run 1..n without a gap."""
    seqs = []
    for info in store.list(prefix(target)):
        m = _NAME.fullmatch(info.key[len(prefix(target)):])
        if not m:
            raise IntegrityError(f"the erasure ledger of {target} holds an object it did not write: {info.key}",
                                 "find out who wrote it and move it out of the ledger's prefix; nothing was changed")
        seqs.append(int(m["seq"]))
    seqs.sort()
    for expected, seq in enumerate(seqs, start=1):
        if seq != expected:
            raise IntegrityError(f"the erasure ledger of {target} is broken: entry {expected} is missing", _BROKEN_HINT)
    return len(seqs)


def _open(store: BackupStore, keys: list[BackupKey], target: str, seq: int) -> LedgerEntry:
    key = _object_key(target, seq)
    label = f"erasure ledger entry {key}"
    data = store.get_bytes(key)
    doc = json.loads(b"".join(decrypt_stream([data], keys, label)))   # authenticated, or IntegrityError
    if (doc.get("format"), doc.get("target"), doc.get("seq")) != (FORMAT, target, seq):
        raise IntegrityError(f"{label} does not belong where it was found (it names target {doc.get('target')!r}, "
                             f"entry {doc.get('seq')})", _BROKEN_HINT)
    return LedgerEntry(
        seq=seq, kind=doc["kind"], at=datetime.fromisoformat(doc["at"]), run_id=doc["run_id"],
        table=doc.get("table", ""), key_columns=tuple(doc.get("key_columns", ())),
        key_types=tuple(doc.get("key_types", ())), keys=tuple(tuple(k) for k in doc.get("keys", ())),
        rows=doc.get("rows", {}), txid=doc.get("txid", ""), void=tuple(doc.get("void", ())),
        sha256=hashlib.sha256(data).hexdigest(), prev_sha256=doc["prev_sha256"])


def read_ledger(store: BackupStore, keys: list[BackupKey], target: str, since: datetime | None = None,
                expected_total: int | None = None) -> LedgerReading:
    """The entries of ``target`` from ``since`` on (all without it), each authenticated and
    chained to the one before; the entry just before the first one read anchors the chain.
    ``expected_total``: how many entries the target's audit trail says exist (the newest ones
    removed from the store are otherwise invisible)."""
    total = _index(store, target)
    if expected_total is not None and total < expected_total:
        raise IntegrityError(f"the erasure ledger of {target} ends at entry {total}, but the target's audit trail "
                             f"records entry {expected_total}: its newest entries are missing from the store", _BROKEN_HINT)
    cache: dict[int, LedgerEntry] = {}

    def entry(seq: int) -> LedgerEntry:
        if seq not in cache:
            cache[seq] = _open(store, keys, target, seq)
        return cache[seq]

    start = 1
    if since is not None:             # the first entry at or after `since`: times grow with numbers
        lo, hi = 1, total + 1
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if entry(mid).at < since else (lo, mid)
        start = lo
    opened = [entry(seq) for seq in range(max(start - 1, 1), total + 1)]
    for before, after in zip(opened, opened[1:]):
        if after.prev_sha256 != before.sha256:
            raise IntegrityError(f"the erasure ledger of {target} is broken between entries {before.seq} and "
                                 f"{after.seq}: an entry was replaced", _BROKEN_HINT)
    if opened and opened[0].seq == 1 and opened[0].prev_sha256 != "":
        raise IntegrityError(f"the erasure ledger of {target} does not start at its first entry", _BROKEN_HINT)
    entries = [e for e in opened if e.seq >= start]
    return LedgerReading(entries, total, len(cache))


class LedgerWriter:
    """Appends entries for one run. Opened once per run under the cleanup's advisory lock: it
    authenticates the newest entry to continue the chain from it."""

    def __init__(self, store: BackupStore, target: str, key: BackupKey, read_keys: list[BackupKey]):
        self.store, self.target, self.key, self.read_keys = store, target, key, read_keys
        self.seq, self.prev = _index(store, target), ""
        if self.seq:
            self.prev = _open(store, read_keys, target, self.seq).sha256

    def unresolved(self) -> list[LedgerEntry]:
        """Erasure entries after the newest outcome entry: whether their batches committed is not
        recorded yet (normally none; a killed run leaves some)."""
        pending, seq = [], self.seq
        while seq > 0:
            e = _open(self.store, self.read_keys, self.target, seq)
            if e.kind == "outcome":
                break
            pending.append(e)
            seq -= 1
        return pending[::-1]

    def _append(self, doc: dict) -> int:
        seq = self.seq + 1
        doc = {"format": FORMAT, "version": VERSION, "target": self.target, "seq": seq,
               "prev_sha256": self.prev, **doc}
        data = b"".join(encrypt_stream([json.dumps(doc).encode()], self.key))
        stored = self.store.put_bytes(_object_key(self.target, seq), data)   # create-only: a racing writer fails
        self.seq, self.prev = seq, stored.sha256
        return seq

    def append_erasure(self, run_id: str, at: datetime, txid: str, table: str, key_columns: tuple[str, ...],
                       key_types: tuple[str, ...], keys: list[list[str]], rows: dict[str, dict[str, int]]) -> int:
        return self._append({"kind": "erasure", "at": at.astimezone(timezone.utc).isoformat(), "run_id": run_id,
                             "txid": txid, "table": table, "key_columns": list(key_columns),
                             "key_types": list(key_types), "keys": keys, "rows": rows})

    def append_outcome(self, run_id: str, at: datetime, void: list[int]) -> int:
        return self._append({"kind": "outcome", "at": at.astimezone(timezone.utc).isoformat(), "run_id": run_id,
                             "void": void})
