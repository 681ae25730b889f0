"""The one interface every backup store implements. Stores know keys and bytes, not dumps."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    sha256: str
    location: str


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime


class _Hashing:
    """Wraps a chunk iterator, counting bytes and hashing them as they pass to the store."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = chunks
        self.size = 0
        self._sha = hashlib.sha256()

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            if chunk:
                self.size += len(chunk)
                self._sha.update(chunk)
                yield chunk

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()


class BackupStore(ABC):
    """put() is all-or-nothing: either the whole object becomes visible under ``key`` or,
    when the chunk iterator raises or the store fails, nothing does and the error propagates.

    Writes are create-only unless ``overwrite=True``: an existing object is never replaced by
    accident (ObjectExists is raised and nothing is written). WAL segments, manifests and reports
    rely on it; only leases, which are renewed in place, overwrite."""

    def put(self, key: str, chunks: Iterable[bytes], size_hint: int | None = None, overwrite: bool = False) -> StoredObject:
        hashing = _Hashing(chunks)
        self._put(key, iter(hashing), size_hint, overwrite)
        return StoredObject(key, hashing.size, hashing.sha256, self.location(key))

    def put_bytes(self, key: str, data: bytes, overwrite: bool = False) -> StoredObject:
        """A small object in a single request."""
        return self.put(key, [data], len(data), overwrite)

    def get_bytes(self, key: str) -> bytes:
        return b"".join(self.get(key))

    @abstractmethod
    def _put(self, key: str, chunks: Iterator[bytes], size_hint: int | None, overwrite: bool) -> None: ...

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """Size and modification time of an object, or None if it does not exist."""

    @abstractmethod
    def get(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Stream an object's bytes; raises StorageError if it does not exist."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every complete object whose key starts with ``prefix``, sorted by key."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete an object; deleting a missing object is not an error."""

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def sweep_leftovers(self, prefix: str, older_than: timedelta) -> list[str]:
        """Remove what writers killed outright (SIGKILL, power loss) left behind under ``prefix``
        (a namespace this caller owns) and could not clean up themselves; returns what was removed.
        Never touches anything outside ``prefix``."""
        return []

    @abstractmethod
    def location(self, key: str) -> str:
        """A URL naming the object, for people (never contains credentials)."""
