"""The encrypted stream format, without I/O: round trips, and every kind of tampering fails."""

from __future__ import annotations

import os
import struct

import pytest

from dbops_pipelines.backup.crypto import (HEADER_LEN, NONCE_LEN, RECORD_PLAINTEXT, BackupKey, decrypt_stream,
                                           encrypt_stream, generate_key, key_from_env)
from dbops_pipelines.errors import EncryptionKeyError, IntegrityError

KEY = BackupKey(bytes(range(32)), "TEST")
OTHER = BackupKey(bytes(range(1, 33)), "OTHER")


def enc(data: bytes, chunk: int = 1000, key: BackupKey = KEY) -> bytes:
    return b"".join(encrypt_stream((data[i:i + chunk] for i in range(0, len(data), chunk)), key))


def dec(blob: bytes, keys=(KEY,), piece: int = 777) -> bytes:
    return b"".join(decrypt_stream((blob[i:i + piece] for i in range(0, len(blob), piece)), keys, "backup X"))


def records(blob: bytes) -> list[tuple[int, int]]:
    """(offset, total length) of each record."""
    out, pos = [], HEADER_LEN
    while pos < len(blob):
        (n,) = struct.unpack(">I", blob[pos:pos + 4])
        out.append((pos, 4 + NONCE_LEN + n))
        pos += 4 + NONCE_LEN + n
    return out


@pytest.mark.parametrize("size", [0, 1, RECORD_PLAINTEXT - 1, RECORD_PLAINTEXT, RECORD_PLAINTEXT + 1, 3 * RECORD_PLAINTEXT + 5])
def test_round_trip_any_size(size):
    data = os.urandom(size)
    blob = enc(data, chunk=65536)
    assert dec(blob) == data
    assert len(records(blob)) == max(1, -(-size // RECORD_PLAINTEXT))  # the last record is always the final one


def test_fresh_salt_and_nonces_every_time():
    data = b"same input" * 1000
    a, b = enc(data), enc(data)
    assert a != b and a[:HEADER_LEN - 32] == b[:HEADER_LEN - 32]  # same magic and key id, new salt


def test_key_id_identifies_key_without_revealing_it():
    assert KEY.key_id != OTHER.key_id and len(KEY.key_id) == 16
    assert bytes(range(32)).hex()[:16] not in KEY.key_id
    assert "TEST" in repr(KEY) and bytes(range(32)).hex() not in repr(KEY)


def test_wrong_key_names_key_id():
    with pytest.raises(EncryptionKeyError, match=KEY.key_id):
        dec(enc(b"x" * 10), keys=(OTHER,))


def test_rotation_any_configured_key_reads():
    assert dec(enc(b"old data", key=OTHER), keys=(KEY, OTHER)) == b"old data"


def test_bit_flip_anywhere_in_a_record_fails():
    blob = bytearray(enc(os.urandom(3 * RECORD_PLAINTEXT)))
    for offset, length in records(bytes(blob)):
        for where in (offset + 4, offset + 4 + NONCE_LEN, offset + length - 1):
            damaged = bytearray(blob)
            damaged[where] ^= 0x80
            with pytest.raises(IntegrityError, match="backup X"):
                dec(bytes(damaged))


def test_truncation_at_record_boundary_fails():
    blob = enc(os.urandom(2 * RECORD_PLAINTEXT + 10))
    for offset, _ in records(blob)[1:]:
        with pytest.raises(IntegrityError, match="truncated"):
            dec(blob[:offset])


def test_dropped_or_swapped_records_fail():
    blob = enc(os.urandom(3 * RECORD_PLAINTEXT + 10))
    recs = [blob[o:o + n] for o, n in records(blob)]
    head = blob[:HEADER_LEN]
    with pytest.raises(IntegrityError):
        dec(head + recs[0] + recs[2] + recs[3])
    with pytest.raises(IntegrityError):
        dec(head + recs[1] + recs[0] + recs[2] + recs[3])


def test_records_spliced_from_another_backup_fail():
    a, b = enc(os.urandom(2 * RECORD_PLAINTEXT)), enc(os.urandom(2 * RECORD_PLAINTEXT))
    ra, rb = records(a), records(b)
    spliced = a[:ra[1][0]] + b[rb[1][0]:]
    with pytest.raises(IntegrityError):
        dec(spliced)


def test_trailing_garbage_fails():
    with pytest.raises(IntegrityError, match="after its final record"):
        dec(enc(b"abc") + b"junk")


def test_not_a_dbops_object():
    with pytest.raises(IntegrityError, match="bad header"):
        dec(b"PGDMP" + os.urandom(100))


def test_keys_from_environment():
    key = key_from_env("K", {"K": generate_key()})
    assert len(key.material) == 32
    with pytest.raises(EncryptionKeyError, match=r"\$K is not set"):
        key_from_env("K", {})
    with pytest.raises(EncryptionKeyError, match="not valid base64"):
        key_from_env("K", {"K": "not base64!!"})
    with pytest.raises(EncryptionKeyError, match="16 bytes, expected 32"):
        key_from_env("K", {"K": "A" * 22 + "=="})
