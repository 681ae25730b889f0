"""The stored object: a JSON header line and a zstd frame of the file's bytes, encrypted
together, so that the header is authenticated with the data (see the package docstring)."""

from __future__ import annotations

# zstandard and the crypto module are imported where they are used: the cheap answers of wal-push
# and wal-fetch (a process per WAL file, see fast_push_done) then start in about 0.1 s.
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from dbops_pipelines.errors import DbopsError, IntegrityError
from dbops_pipelines.wal.archive.spool import READ_CHUNK
from dbops_pipelines.wal.naming import archive_key, cluster_prefix

if TYPE_CHECKING:
    from dbops_pipelines.backup.crypto import BackupKey
    from dbops_pipelines.storage.base import BackupStore

OBJECT_FORMAT = "dbops-wal"
OBJECT_VERSION = 1
OBJECT_SUFFIX = ".zst.aes"
MAX_HEADER = 4096


def _plain_chunks(path: Path, header: dict, level: int) -> Iterator[bytes]:
    import zstandard

    yield json.dumps(header, sort_keys=True).encode() + b"\n"
    cobj = zstandard.ZstdCompressor(level=level).compressobj()
    sha, size = hashlib.sha256(), 0
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise DbopsError(f"cannot read {path}: {exc.strerror or exc}", "check the file and its permissions") from None
    with fh:
        while chunk := fh.read(READ_CHUNK):
            sha.update(chunk)
            size += len(chunk)
            out = cobj.compress(chunk)
            if out:
                yield out
    if sha.hexdigest() != header["sha256"] or size != header["size"]:
        # Raised before the final encrypted record: the put is abandoned, nothing is stored.
        raise DbopsError(f"{path} changed while it was being archived", "this should not happen to a finished WAL file; check what writes to pg_wal")
    yield cobj.flush()


def store_file(store: BackupStore, key_for_writing: BackupKey, cluster: str, path: Path, header: dict, level: int) -> int:
    """Store ``path`` under its archive key; returns the stored size. Raises ObjectExists."""
    from dbops_pipelines.backup.crypto import encrypt_stream

    stored = store.put(archive_key(cluster, path.name), encrypt_stream(_plain_chunks(path, header, level), key_for_writing),
                       size_hint=header["size"] // 3)
    return stored.size


def read_object(store: BackupStore, keys: Iterable[BackupKey], cluster: str, name: str,
                sink: Callable[[bytes], None] | None = None) -> dict:
    """Stream the archived ``name``, authenticate it, decompress it into ``sink`` and check it
    against its header; returns the header. IntegrityError for any damage, StorageError when
    the store fails (or the object is missing)."""
    import zstandard

    from dbops_pipelines.backup.crypto import decrypt_stream

    key = archive_key(cluster, name)
    label = f"WAL file {name} ({store.location(key)})"
    plain = decrypt_stream(store.get(key), keys, label)
    buf = b""
    for chunk in plain:
        buf += chunk
        if b"\n" in buf or len(buf) > MAX_HEADER:
            break
    line, sep, rest = buf.partition(b"\n")
    try:
        if not sep:
            raise ValueError("no header")
        header = json.loads(line)
        if header.get("format") != OBJECT_FORMAT or not isinstance(header.get("size"), int):
            raise ValueError("not a dbops WAL object")
    except ValueError as exc:
        raise IntegrityError(f"{label} has no valid header ({exc})", "do not use it; check the store") from None
    if header.get("name") != name or header.get("cluster") != cluster_prefix(cluster):
        raise IntegrityError(f"{label} holds {header.get('name')} of {header.get('cluster')}: it was copied or renamed "
                             "in the store", "do not use it; check who can write to the store")
    dobj = zstandard.ZstdDecompressor().decompressobj()
    sha, size = hashlib.sha256(), 0

    def feed(data: bytes) -> None:
        nonlocal size
        if not data:
            return
        if dobj.eof:
            raise IntegrityError(f"{label} has data after its compressed content", "do not use it; check the store")
        try:
            out = dobj.decompress(data)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"{label} does not decompress: {exc}", "do not use it; check the store") from None
        if out:
            sha.update(out)
            size += len(out)
            if size > header["size"]:
                raise IntegrityError(f"{label} is longer than its header says", "do not use it; check the store")
            if sink is not None:
                sink(out)

    feed(rest)
    for chunk in plain:   # to the end: the final record's authentication is part of the check
        feed(chunk)
    if not dobj.eof or size != header["size"] or sha.hexdigest() != header.get("sha256"):
        raise IntegrityError(f"{label} does not match its header: {size} bytes with sha256 {sha.hexdigest()}, expected "
                             f"{header['size']} bytes with sha256 {header.get('sha256')}", "do not use it; check the store")
    return header
