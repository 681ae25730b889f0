"""Encryption keys and the chunked AES-256-GCM stream format of stored backups.

Stream layout (all integers big-endian):

    header  = MAGIC(8) | key_id(16 ascii hex) | salt(32)
    record  = length(4) | nonce(12) | ciphertext+tag(length)     (repeated)

Each backup encrypts with its own subkey, HKDF-SHA256(master key, salt), so nonces can never
repeat across backups; each record also gets a fresh random nonce. The associated data of a
record binds the header, the record's index and whether it is the last one, so records cannot
be reordered, dropped, spliced from another backup, or cut off at the end without failing
authentication. Decryption yields a record's plaintext only after its tag verified.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from dbops_pipelines.errors import EncryptionKeyError, IntegrityError

MAGIC = b"DBOPSv1\n"
KEY_ID_LEN = 16
SALT_LEN = 32
NONCE_LEN = 12
TAG_LEN = 16
HEADER_LEN = len(MAGIC) + KEY_ID_LEN + SALT_LEN
RECORD_PLAINTEXT = 1 << 20  # 1 MiB: bounded memory, negligible framing overhead
MAX_RECORD = RECORD_PLAINTEXT + TAG_LEN


@dataclass(frozen=True)
class BackupKey:
    """A 32-byte master key. ``key_id`` is derived from it, so it names the key without revealing it."""

    material: bytes
    source: str  # the environment variable it came from, for messages

    def __post_init__(self) -> None:
        if len(self.material) != 32:
            raise EncryptionKeyError(
                f"the key in ${self.source} is {len(self.material)} bytes, expected 32",
                "generate one with `dbops keygen`",
            )

    @property
    def key_id(self) -> str:
        return hashlib.sha256(b"dbops key id v1" + self.material).hexdigest()[:KEY_ID_LEN]

    def __repr__(self) -> str:  # never print the material
        return f"BackupKey(key_id={self.key_id}, source=${self.source})"


def generate_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def key_from_env(var: str, environ: dict | None = None) -> BackupKey:
    env = os.environ if environ is None else environ
    value = env.get(var)
    if not value:
        raise EncryptionKeyError(
            f"encryption key variable ${var} is not set",
            f"export {var}=<base64 key>; create one with `dbops keygen` and keep a copy in your secret store",
        )
    try:
        material = base64.b64decode(value.strip(), validate=True)
    except ValueError:
        raise EncryptionKeyError(
            f"${var} is not valid base64", "set it to the output of `dbops keygen`"
        ) from None
    return BackupKey(material, var)


def _subkey(key: BackupKey, salt: bytes) -> AESGCM:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"dbops backup stream v1")
    return AESGCM(hkdf.derive(key.material))


def manifest_mac(key: BackupKey, payload: bytes) -> str:
    """HMAC-SHA256 of a manifest's canonical JSON under a key derived for manifests only, so a
    manifest edited in the store (row counts, checksums, schema) is detected before it is trusted."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"dbops manifest mac v1")
    return hmac.new(hkdf.derive(key.material), payload, hashlib.sha256).hexdigest()


def _aad(header: bytes, index: int, final: bool) -> bytes:
    return header + struct.pack(">Q?", index, final)


def encrypt_stream(chunks: Iterable[bytes], key: BackupKey) -> Iterator[bytes]:
    """Yield the header, then one record per RECORD_PLAINTEXT bytes of input.

    The final record (possibly empty) is only emitted once ``chunks`` is exhausted without
    error: a producer that fails mid-way leaves a stream that will never authenticate.
    """
    salt = os.urandom(SALT_LEN)
    header = MAGIC + key.key_id.encode() + salt
    aead = _subkey(key, salt)
    yield header
    buf = bytearray()
    index = 0

    def seal(data: bytes, final: bool) -> bytes:
        nonce = os.urandom(NONCE_LEN)
        ct = aead.encrypt(nonce, data, _aad(header, index, final))
        return struct.pack(">I", len(ct)) + nonce + ct

    for chunk in chunks:
        buf += chunk
        while len(buf) > RECORD_PLAINTEXT:  # keep >=1 byte back: the last record must be final
            yield seal(bytes(buf[:RECORD_PLAINTEXT]), False)
            del buf[:RECORD_PLAINTEXT]
            index += 1
    yield seal(bytes(buf), True)


def read_header(header: bytes) -> str:
    """Return the key id a stream was written with, or raise if it is not a dbops stream."""
    if len(header) < HEADER_LEN or not header.startswith(MAGIC):
        raise IntegrityError(
            "not a dbops encrypted backup (bad header)",
            "the object is corrupted or not written by dbops; pick another backup",
        )
    return header[len(MAGIC) : len(MAGIC) + KEY_ID_LEN].decode("ascii", "replace")


class _Reader:
    """Reads exact byte counts from an iterator of arbitrarily sized chunks."""

    def __init__(self, chunks: Iterable[bytes]):
        self._it = iter(chunks)
        self._buf = bytearray()

    def read(self, n: int) -> bytes:
        while len(self._buf) < n:
            nxt = next(self._it, None)
            if nxt is None:
                break
            self._buf += nxt
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out


def decrypt_stream(chunks: Iterable[bytes], keys: Iterable[BackupKey], label: str = "backup") -> Iterator[bytes]:
    """Authenticate and decrypt a stream record by record. ``label`` names it in errors."""
    reader = _Reader(chunks)
    header = reader.read(HEADER_LEN)
    key_id = read_header(header)
    by_id = {k.key_id: k for k in keys}
    if key_id not in by_id:
        raise EncryptionKeyError(
            f"{label} was encrypted with key id {key_id}, which none of the configured keys "
            f"({', '.join(sorted(by_id)) or 'none'}) matches",
            "set the key it was written with (encryption.key_env, or encryption.previous_key_envs after a rotation)",
        )
    aead = _subkey(by_id[key_id], header[len(MAGIC) + KEY_ID_LEN :])
    index = 0
    while True:
        head = reader.read(4 + NONCE_LEN)
        if len(head) < 4 + NONCE_LEN:
            raise IntegrityError(
                f"{label} is truncated: it ends after {index} records without the final one",
                "the object was cut short; restore from another backup",
            )
        (length,) = struct.unpack(">I", head[:4])
        if length > MAX_RECORD or length < TAG_LEN:
            raise IntegrityError(f"{label} is corrupted: record {index} has an impossible length", "restore from another backup")
        body = reader.read(length)
        if len(body) < length:
            raise IntegrityError(f"{label} is truncated inside record {index}", "restore from another backup")
        nonce = head[4:]
        for final in (False, True):
            try:
                plain = aead.decrypt(nonce, body, _aad(header, index, final))
                break
            except InvalidTag:
                continue
        else:
            raise IntegrityError(
                f"{label} failed authentication at record {index}: corrupted, or not written with this key",
                "do not use this backup; restore from another one and check the store",
            )
        yield plain
        if final:
            if reader.read(1):
                raise IntegrityError(f"{label} has data after its final record", "the object was tampered with; use another backup")
            return
        index += 1


# --- sealed JSON records (manifests, verification reports) -----------------------------------
# The MAC covers the body's bytes exactly as stored (never a re-serialisation, so records can
# gain fields without invalidating old ones) and the place the record belongs, so a record
# copied into another backup's folder does not authenticate there.

_SEALED = re.compile(rb'\A\{"format": "(?P<format>[a-z-]+)", "version": (?P<version>\d+), "key_id": "(?P<key_id>[0-9a-f]{16})", '
                     rb'"mac": "(?P<mac>[0-9a-f]{64})", "body": ')


def _record_mac(key: BackupKey, fmt: str, version: int, binding: str, body: bytes) -> str:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=f"dbops sealed record {fmt}".encode())
    msg = b"%s\x00%d\x00%s\x00" % (fmt.encode(), version, binding.encode()) + body
    return hmac.new(hkdf.derive(key.material), msg, hashlib.sha256).hexdigest()


def seal_record(key: BackupKey, fmt: str, version: int, binding: str, body: bytes) -> bytes:
    """A JSON document ``{"format", "version", "key_id", "mac", "body": <body bytes as given>}``.
    ``binding`` names where the record belongs (e.g. "app/app-20261124T020000Z-1a2b")."""
    mac = _record_mac(key, fmt, version, binding, body)
    head = f'{{"format": "{fmt}", "version": {version}, "key_id": "{key.key_id}", "mac": "{mac}", "body": '
    return head.encode() + body + b"}\n"


@dataclass(frozen=True)
class OpenedRecord:
    version: int
    key_id: str
    body: bytes


def open_record(data: bytes, keys: Iterable[BackupKey], fmt: str, binding: str, label: str) -> OpenedRecord:
    """The body of a sealed record after its MAC verified for ``binding``; raises IntegrityError
    (not sealed, altered, or belongs elsewhere) or EncryptionKeyError (its key is not configured)."""
    m = _SEALED.match(data)
    if not m or not data.endswith(b"}\n") or m["format"].decode() != fmt:
        raise IntegrityError(f"{label} is not a sealed {fmt} record", "do not trust it; check who can write to the store")
    key_id, version = m["key_id"].decode(), int(m["version"])
    by_id = {k.key_id: k for k in keys}
    if key_id not in by_id:
        raise EncryptionKeyError(
            f"{label} is signed with key id {key_id}, which none of the configured keys ({', '.join(sorted(by_id)) or 'none'}) matches",
            "set the key it was written with (encryption.key_env, or encryption.previous_key_envs after a rotation)",
        )
    body = data[m.end():-2]
    expected = _record_mac(by_id[key_id], fmt, version, binding, body)
    if not hmac.compare_digest(expected, m["mac"].decode()):
        raise IntegrityError(f"{label} has been altered or does not belong where it was found",
                             "do not trust this record; check who can write to the store")
    return OpenedRecord(version, key_id, body)
