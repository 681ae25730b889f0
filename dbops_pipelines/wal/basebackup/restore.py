"""Restoring a base backup into a new or empty directory, and checking the restored files with
pg_verifybackup (see the package docstring)."""

from __future__ import annotations

import hashlib
import os
import pwd
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zstandard

from dbops_pipelines.backup.crypto import decrypt_stream
from dbops_pipelines.backup.engine import READ_SIZE
from dbops_pipelines.errors import EncryptionKeyError, IntegrityError, RestoreFailed, VerificationNotRun
from dbops_pipelines.pgtools import PgProcess, find_binary
from dbops_pipelines.progress import Progress
from dbops_pipelines.redact import redact
from dbops_pipelines.restore import _checked
from dbops_pipelines.wal.basebackup.extract import Counted, Pull, claim, remove_extracted, safe_member
from dbops_pipelines.wal.basebackup.manifest import BaseBackupManifest

PG_OS_USER = "postgres"        # who runs the server on a restored directory when we are root


@dataclass(frozen=True)
class RestoredBaseBackup:
    backup_id: str
    data_dir: Path
    manifest: BaseBackupManifest
    backup_manifest_path: Path
    backup_label_path: Path
    files: int
    raw_bytes: int
    seconds: float
    owner: str                       # the OS user the files belong to

    def to_dict(self) -> dict:
        return {"id": self.backup_id, "data_dir": str(self.data_dir), "files": self.files, "raw_bytes": self.raw_bytes,
                "seconds": round(self.seconds, 3), "owner": self.owner, "start_lsn": self.manifest.start_lsn,
                "stop_lsn": self.manifest.stop_lsn, "timeline": self.manifest.timeline,
                "system_identifier": self.manifest.system_identifier}


def _os_owner() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_OS_USER)
    except KeyError:
        raise RestoreFailed(f"running as root, but there is no {PG_OS_USER!r} OS user to give the restored directory to "
                            "(PostgreSQL refuses to run as root); nothing was restored",
                            "install the PostgreSQL server package (it creates the user), or run as the user the server runs as") from None


def restore_base_backup(ctx, manifest: BaseBackupManifest, into: Path, progress: Callable[[Progress], None] | None = None,
                        progress_interval: float = 5.0) -> RestoredBaseBackup:
    """Restore an authenticated base backup (find_base_backup / list_base_backups) into ``into``,
    a new or empty directory. Nothing is written anywhere else, and nothing is left on failure."""
    into = Path(os.path.abspath(into))
    keys = list(ctx.read_keys)
    if manifest.key_id not in {k.key_id for k in keys}:
        raise EncryptionKeyError(
            f"base backup {manifest.backup_id} was encrypted with key id {manifest.key_id}; the configured keys are "
            f"{', '.join(k.key_id for k in keys) or 'none'}",
            "set the key it was written with (encryption.key_env, or encryption.previous_key_envs after a rotation)")
    if not manifest.backup_manifest_sha256:
        raise IntegrityError(f"the manifest of base backup {manifest.backup_id} records no backup_manifest checksum",
                             "take a new base backup")
    owner = _os_owner()
    created = claim(into)
    label = f"base backup {manifest.backup_id} (key id {manifest.key_id})"
    t0 = last = time.monotonic()
    raw = [0]

    def counted(n: int) -> None:
        nonlocal last
        raw[0] += n
        if progress and time.monotonic() - last >= progress_interval:
            last = time.monotonic()
            progress(Progress(raw[0], raw[0], last - t0))

    files = 0
    try:
        # stored bytes -> size/sha256 check (at the end) -> record-by-record authentication ->
        # zstd (a bounded reader: a WAL segment of zeros must not expand in one call) -> tar.
        plain = Pull(decrypt_stream(_checked(ctx.store.get(manifest.object_key), manifest), keys, label))
        counting = Counted(zstandard.ZstdDecompressor().stream_reader(plain, read_size=READ_SIZE), counted)
        dest = str(into)
        try:
            # bufsize 64 KiB: tarfile copies its buffer's remainder on every header read
            with tarfile.open(fileobj=counting, mode="r|", bufsize=1 << 16, copybufsize=READ_SIZE) as tf:
                for member in tf:
                    tf.extract(member, dest, set_attrs=True, filter=safe_member)
                    files += member.isfile()
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"{label} does not decompress: {exc}", "do not use this base backup") from None
        except tarfile.TarError as exc:
            raise IntegrityError(f"{label} is not a readable tar archive: {exc}", "do not use this base backup") from None
        except OSError as exc:
            raise RestoreFailed(f"writing the base backup into {into} failed: {exc}; what was extracted was removed",
                                "check free space and permissions, then restore again") from None
        counting.drain()   # the tar's trailer: the rest of the zstd frame
        plain.drain()      # the final record authenticates and the stored object's sha256 is checked
        bm = into / "backup_manifest"
        if not bm.is_file() or hashlib.sha256(bm.read_bytes()).hexdigest() != manifest.backup_manifest_sha256:
            raise IntegrityError(f"{label}: the restored backup_manifest {'is missing' if not bm.is_file() else 'differs from the one recorded at backup time'}",
                             "do not use this base backup; restore another one")
        if not (into / "backup_label").is_file() or not (into / "PG_VERSION").is_file():
            raise IntegrityError(f"{label}: the restored directory lacks backup_label or PG_VERSION", "do not use this base backup")
        if owner is not None:
            try:
                os.chown(into, owner.pw_uid, owner.pw_gid)
                for root, dirs, names in os.walk(into):
                    for n in dirs + names:
                        os.lchown(os.path.join(root, n), owner.pw_uid, owner.pw_gid)
            except OSError as exc:
                raise RestoreFailed(f"cannot give {into} to the {PG_OS_USER} OS user: {exc}; what was extracted was removed",
                                    "check the file system (it must support ownership), then restore again") from None
    except BaseException:
        remove_extracted(into, created)
        raise
    if progress:
        progress(Progress(raw[0], raw[0], time.monotonic() - t0))
    return RestoredBaseBackup(manifest.backup_id, into, manifest, into / "backup_manifest", into / "backup_label", files,
                              raw[0], time.monotonic() - t0, owner.pw_name if owner else pwd.getpwuid(os.geteuid()).pw_name)


# --- checking the files ----------------------------------------------------------------------

@dataclass(frozen=True)
class BaseBackupFilesCheck:
    data_dir: Path
    ok: bool
    exit_code: int
    messages: tuple[str, ...]
    seconds: float

    @property
    def summary(self) -> str:
        if self.ok:
            return f"pg_verifybackup: every file of {self.data_dir} matches backup_manifest and the WAL it needs parses"
        return f"pg_verifybackup found problems in {self.data_dir}: " + ("; ".join(self.messages[-5:]) or f"exit {self.exit_code}")

    def to_dict(self) -> dict:
        return {"data_dir": str(self.data_dir), "ok": self.ok, "exit_code": self.exit_code,
                "messages": list(self.messages), "seconds": round(self.seconds, 3)}


def verify_base_backup_files(data_dir: Path, pg_bin_dir: str | None = None) -> BaseBackupFilesCheck:
    """``pg_verifybackup`` on a restored directory: every file against backup_manifest (sizes,
    CRC32C), and the WAL between the backup's start and stop parsed (-X fetch put it in pg_wal).
    A failure is a finding (ok False, with its messages); VerificationNotRun when it cannot run.
    Run it before a server starts on the directory (starting renames backup_label)."""
    data_dir = Path(os.path.abspath(data_dir))
    try:
        major = int((data_dir / "PG_VERSION").read_text().split(".")[0])
    except (OSError, ValueError):
        return BaseBackupFilesCheck(data_dir, False, -1, (f"{data_dir} has no readable PG_VERSION: not a data directory",), 0.0)
    if not (data_dir / "backup_manifest").is_file():
        return BaseBackupFilesCheck(data_dir, False, -1, (f"{data_dir} has no backup_manifest: nothing to verify against",), 0.0)
    binary = find_binary("pg_verifybackup", major, pg_bin_dir, VerificationNotRun)
    t0 = time.monotonic()
    with PgProcess([str(binary), str(data_dir)], stdout=True, error=VerificationNotRun) as proc:
        out = proc.stdout.read().decode("utf-8", "replace")
        rc = proc.wait()
    lines = tuple(redact(line) for line in (out.splitlines() + proc.messages.text().splitlines()) if line.strip())
    return BaseBackupFilesCheck(data_dir, rc == 0, rc, lines, time.monotonic() - t0)
