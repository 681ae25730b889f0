"""The fleet context: what every operation needs, built once per run or command and passed
into the core: the config snapshot, the store, and the keys (read from the environment once)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from dbops_pipelines.backup.crypto import BackupKey, key_from_env
from dbops_pipelines.config import FleetConfig
from dbops_pipelines.errors import EncryptionKeyError
from dbops_pipelines.storage import BackupStore, open_store


@dataclass
class FleetContext:
    config: FleetConfig
    store: BackupStore = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.store is None:
            s = self.config.storage
            self.store = open_store(s.url, s.s3_endpoint_url, s.s3_region)

    @cached_property
    def write_key(self) -> BackupKey:
        """The key new backups are encrypted with; raises before anything is dumped if missing."""
        return key_from_env(self.config.encryption.key_env)

    @cached_property
    def read_keys(self) -> list[BackupKey]:
        """Every configured key that is set: the current one and those kept after rotations.
        Listing, checking, restoring and verifying authenticate with these."""
        keys, problems = [], []
        for var in [self.config.encryption.key_env, *self.config.encryption.previous_key_envs]:
            try:
                keys.append(key_from_env(var))
            except EncryptionKeyError as exc:
                problems.append(exc.message)
        if not keys:
            raise EncryptionKeyError("; ".join(problems), "export the key the backups were written with (see `dbops keygen`)")
        return keys

    def storage_location(self, key: str) -> str:
        return self.store.location(key)
