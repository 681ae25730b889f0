"""Resources hand the core its context; secrets stay in the environment of the run."""


import os

import dagster as dg

from dbops_pipelines.config import DEFAULT_CONFIG_PATH, FleetConfig, load_config
from dbops_pipelines.context import FleetContext


class DbopsFleet(dg.ConfigurableResource):
    """The fleet described by dbops.yaml. Only the path is Dagster config, never a secret."""

    config_path: str = os.environ.get("DBOPS_CONFIG", DEFAULT_CONFIG_PATH)

    def config(self) -> FleetConfig:
        return load_config(self.config_path)

    def context(self) -> FleetContext:
        """The fleet context for one run or check evaluation: config, store and keys, built once."""
        return FleetContext(self.config())
