"""Physical base backups of a cluster through the encrypted store, and restoring one into a
directory (docs/pitr.md#base-backups).

Backup: ``pg_basebackup -D - -Ft -X fetch`` writes one tar to stdout (the data directory,
backup_label first, the WAL needed to reach consistency under pg_wal/, and the server's
backup_manifest last). It is streamed through zstd and chunked AES-256-GCM into
``wal/<cluster>/base/<id>/base.tar.zst.aes`` with the writer's lease beside it; the sealed
manifest.json is written last, create-only. Any failure (pg_basebackup's exit, a signal, the
store) removes what was written, so nothing half-done is ever listed as a base backup.

The tar is watched as it passes (``TarWatch``: headers only, member data is skipped by
counting), never parsed by a second reader and never written to local disk. From it come:
  - backup_label: start LSN, checkpoint, start timeline and time (the server's own record);
  - backup_manifest: its sha256 (kept, to compare after a restore) and its WAL-Ranges, which
    give the stop LSN. The server writes that range after pg_backup_stop for exactly this
    backup, and pg_verifybackup relies on it. pg_control_checkpoint() would give the newest
    checkpoint, possibly a later one, and the backup history file (which has STOP TIME) is
    neither in the tar nor readable by a replication role;
  - global/pg_control: the system identifier of the cluster that was really copied, checked
    against the one the SQL connection saw (a pooler or proxy may route them apart);
  - the moment the first pg_wal/ member passes, which comes after the server stopped the
    backup: on the server's clock (its offset measured before the backup), that is the stop
    time, a conservative upper bound (late by at most the time to send the WAL).

Restore: the stored object is checked (size and sha256 against the manifest), authenticated
record by record, decompressed with bounded memory and extracted into a new (or empty)
directory, refusing absolute paths, '..', links leading outside, device files and fifos.
backup_manifest's sha256 must match the manifest's. On any failure everything extracted is
removed, and only inside the directory the restore claimed. As root the result is given to the
`postgres` OS user, which will run the server on it.
"""

from __future__ import annotations

from dbops_pipelines.wal.basebackup.catalog import BaseBackupEntry, find_base_backup, list_base_backups
from dbops_pipelines.wal.basebackup.manifest import (DATA_NAME, FORMAT, FORMAT_VERSION, LEASE_NAME, MANIFEST_NAME, OWN_NAMES,
                                                     BaseBackupManifest, cluster_safe, data_key, lease_key, manifest_key,
                                                     new_base_backup_id, parse_base_backup_id, read_base_manifest,
                                                     seal_base_manifest)
from dbops_pipelines.wal.basebackup.restore import (BaseBackupFilesCheck, RestoredBaseBackup, restore_base_backup,
                                                    verify_base_backup_files)
from dbops_pipelines.wal.basebackup.take import take_base_backup
from dbops_pipelines.wal.basebackup.tarwatch import TarWatch

__all__ = [
    "DATA_NAME", "FORMAT", "FORMAT_VERSION", "LEASE_NAME", "MANIFEST_NAME", "OWN_NAMES",
    "BaseBackupEntry", "BaseBackupFilesCheck", "BaseBackupManifest", "RestoredBaseBackup", "TarWatch", "cluster_safe",
    "data_key", "find_base_backup", "lease_key", "list_base_backups", "manifest_key", "new_base_backup_id",
    "parse_base_backup_id", "read_base_manifest", "restore_base_backup", "seal_base_manifest", "take_base_backup",
    "verify_base_backup_files",
]
