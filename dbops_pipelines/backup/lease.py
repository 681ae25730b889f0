"""The writer's lease: a small object in a backup's folder while it is being written, renewed
in place, so retention never judges a backup in flight (catalog: state "writing")."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from datetime import datetime, timezone

from dbops_pipelines.backup.catalog import LEASE_TTL
from dbops_pipelines.backup.manifest import lease_key
from dbops_pipelines.errors import BackupFailed, DbopsError
from dbops_pipelines.storage.base import BackupStore

LEASE_RENEW = 60.0  # seconds; far inside LEASE_TTL, so a few failed renewals are survivable


class WriterLease:
    def __init__(self, store: BackupStore, target: str, backup_id: str, renew_every: float = LEASE_RENEW):
        self.store = store
        self.key = lease_key(target, backup_id)
        self.renew_every = renew_every
        self._stop = threading.Event()
        self._last_renewed = 0.0
        self._thread = threading.Thread(target=self._renew, name="lease-renewal", daemon=True)

    def _body(self) -> bytes:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                           "renewed_at": datetime.now(timezone.utc).isoformat()}).encode()

    def __enter__(self) -> "WriterLease":
        self.store.put_bytes(self.key, self._body())  # create-only: a second writer of this id fails here
        self._last_renewed = time.monotonic()
        self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.renew_every):
            try:
                self.store.put_bytes(self.key, self._body(), overwrite=True)
                self._last_renewed = time.monotonic()
            except DbopsError:
                pass  # the next renewal may succeed; `check_held` refuses to commit once it lapsed

    def check_held(self) -> None:
        """Before the manifest is written: a lapsed lease means retention may have judged this
        backup as a dead writer's leftovers, so it must not be committed."""
        if time.monotonic() - self._last_renewed >= LEASE_TTL.total_seconds():
            raise BackupFailed("the backup's lease in the store could not be renewed for "
                               f"{LEASE_TTL.total_seconds() / 60:.0f} minutes; nothing was committed",
                               "check the store's availability and run the backup again")

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self.store.delete(self.key)
        except DbopsError:
            pass  # harmless: a lease beside a manifest is ignored, and an expired one marks leftovers
