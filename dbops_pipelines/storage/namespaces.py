"""Where each kind of data lives in the one store. Every reader lists only its own namespace and
never deletes what it did not write, so WAL segments, reports and the erasure ledger can share a
bucket with backups without any of them being mistaken for another."""

from __future__ import annotations

BACKUPS = "backups/"              # backups/<target>/<backup_id>/{dump.pgc.zst.aes, manifest.json, writing.lease}
VERIFICATIONS = "_verifications/"  # _verifications/<target>/<backup_id>/<stamp>-<nonce>.json
WAL = "wal/"                      # wal/<cluster>/...          (point-in-time recovery)
REPORTS = "reports/"              # reports/...                (stats reports)
LEDGER = "ledger/"                # ledger/...                 (GDPR erasure ledger)
ALERTS = "_alerts/"               # _alerts/open.json          (open alerts, rewritten by the alert sensor)

ALL = (BACKUPS, VERIFICATIONS, WAL, REPORTS, LEDGER, ALERTS)


def backups_of(target: str | None = None) -> str:
    return BACKUPS + (f"{target}/" if target else "")
