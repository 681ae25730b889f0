"""Resources hand the core its configuration; secrets stay in the environment of the run."""


import os

import dagster as dg

from dbops_pipelines import fleet
from dbops_pipelines.backup.crypto import BackupKey
from dbops_pipelines.config import DEFAULT_CONFIG_PATH, FleetConfig, load_config
from dbops_pipelines.storage import BackupStore


class DbopsFleet(dg.ConfigurableResource):
    """The fleet described by dbops.yaml. Only the path is Dagster config, never a secret."""

    config_path: str = os.environ.get("DBOPS_CONFIG", DEFAULT_CONFIG_PATH)

    def config(self) -> FleetConfig:
        return load_config(self.config_path)

    def store(self) -> BackupStore:
        return fleet.fleet_store(self.config())

    def read_keys(self) -> list[BackupKey]:
        return fleet.read_keys(self.config())
