"""Resources hand the core its configuration; secrets stay in the environment of the run."""


import os

import dagster as dg

from dbops_pipelines.config import DEFAULT_CONFIG_PATH, FleetConfig, load_config


class DbopsFleet(dg.ConfigurableResource):
    """The fleet described by dbops.yaml. Only the path is Dagster config, never a secret."""

    config_path: str = os.environ.get("DBOPS_CONFIG", DEFAULT_CONFIG_PATH)

    def config(self) -> FleetConfig:
        return load_config(self.config_path)
