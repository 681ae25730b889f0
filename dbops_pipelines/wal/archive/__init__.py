"""Continuous WAL archiving through the encrypted store: wal-push, wal-fetch and archive checks.

PostgreSQL runs ``archive_command`` (``dbops wal-push %p``) once per finished WAL file, one at a
time, in the data directory, and ``restore_command`` (``dbops wal-fetch %f %p``) once per file it
wants during recovery. Both are short-lived processes; this module is what they run.

Stored object (``wal/<cluster>/archive/<group>/<name>.zst.aes``, naming.archive_key)::

    encrypt_stream( header line (JSON: format, version, cluster, name, size, sha256, system id) "\\n"
                    zstd frame of the file's bytes )

The header is inside the encryption, so it is authenticated with the data: fetch refuses an
object whose name, cluster, size or sha256 do not match what it was asked for (an object copied
under another name or into another cluster's archive, a truncated or altered one) before anything
appears at the destination. Writes are create-only: an object is never replaced.

push (archive_command)
    1. The file's sha256. If the spool records that exactly this content was stored by an earlier
       call (see "parallel push"), exit 0 at once: no store request.
    2. The cluster identity guard: ``wal/<cluster>/archive.info`` (a record sealed with the key and
       bound to the cluster's prefix) holds the system identifier and WAL segment size of the
       cluster that owns the archive; the first push writes it. WAL from a cluster with another
       system identifier (re-initialised, or a copy restored elsewhere and pointed at the same
       archive) is refused, so it can never interleave with the owner's segments. The check is
       cached in the spool: the store is read once, ``pg_controldata`` runs on every slow call.
    3. Create-only put. If an object is already there, it is read back, authenticated and its
       sha256 compared: identical content is success (PostgreSQL may ask again after a crash);
       different content is a loud failure naming both checksums, and nothing is overwritten.
    4. Only when ``put`` returned (the store's all-or-nothing write: a local file fsynced and
       linked into place, an S3 object completed) is the file recorded in the spool and 0 returned.

parallel push
    One call also stores other files PostgreSQL has marked ``.ready`` in pg_wal/archive_status
    (history files first, then oldest first; up to ``8 * push_parallel`` of them), using
    ``push_parallel`` threads, and records each one stored (name and sha256) in the spool. It
    never renames ``.ready`` to ``.done``: PostgreSQL does that itself when archive_command
    returns 0 for the file, and it will still call wal-push for each of them; those calls find
    the spool record, re-hash the local file and return 0 without touching the store. A backlog
    is thus stored ``push_parallel`` at a time, while PostgreSQL's own calls for it cost one
    process start and one sha256 each. A failure of one of the extra files is a warning only:
    PostgreSQL's own call for it will fail (and retry) loudly.

spool (settings.spool_dir, default ``$TMPDIR/dbops-wal-<cluster>-<uid>``)
    Private (0700, owned by the user running the command; refused otherwise, and never inside
    the data directory, which base backups copy), one subdirectory per store location so that
    pointing the config at another store starts afresh. ``pushed/<name>`` (sha256 of what was
    stored), ``identity`` (the checked system identifier), ``prefetch/<name>`` (+ ``.sha256``).
    Losing it loses nothing: it is a cache of what the store holds. If the archive in the store
    is deleted or replaced under the same location, delete the spool too.

fetch (restore_command)
    A file not in the archive returns False (the CLI exits 1 without a word: PostgreSQL asks for
    files that do not exist, such as the next timeline's history, as a matter of course). Else
    the object is streamed, authenticated record by record, decompressed into a temporary file
    beside the destination and checked against its header; only then is it renamed onto the
    destination (not fsynced: PostgreSQL fsyncs the restored files it keeps, and asks again for
    the others after a crash). Damage raises IntegrityError and leaves nothing at the destination.

prefetch
    When segment N has to come from the store, the next ``prefetch`` segments of the same timeline
    are fetched too, in parallel threads within the same call (alongside N once the segment size
    is known from an earlier call), authenticated and checked as they arrive, and kept in the
    spool as plain files with their sha256. PostgreSQL's next calls find
    them there: the sha256 is checked again and the file is moved into place, with no store
    request (and, through the CLI, without even loading the config). The threads finish before
    the call returns: PostgreSQL runs restore_command as a separate process per file, so nothing
    is left running behind it. Best effort: a segment that cannot be prefetched is simply fetched
    when asked for.

verify_archive
    Lists the archive and reports, per timeline, missing segments between its first segment (or
    its branch point) and its last (or, for a timeline another one branched from, the switch
    point: what follows it on the old timeline is not needed and is ignored), the timeline
    switches read from the history files, and every object that fails authentication (all are
    read unless ``quick``).
"""

from __future__ import annotations

# No module of this package imports zstandard or the crypto module at its top (objects.py,
# identity.py): the cheap answers of wal-push and wal-fetch then start in about 0.1 s.
from dbops_pipelines.wal.archive.fetch import fetch
from dbops_pipelines.wal.archive.identity import ClusterIdentity, ForeignCluster, check_identity, read_identity
from dbops_pipelines.wal.archive.objects import read_object, store_file
from dbops_pipelines.wal.archive.push import PushResult, WalConflict, push
from dbops_pipelines.wal.archive.spool import Spool, fast_fetch_done, fast_push_done
from dbops_pipelines.wal.archive.verify import ArchiveReport, verify_archive

__all__ = [
    "ArchiveReport", "ClusterIdentity", "ForeignCluster", "PushResult", "Spool", "WalConflict",
    "check_identity", "fast_fetch_done", "fast_push_done", "fetch", "push", "read_identity", "read_object",
    "store_file", "verify_archive",
]
