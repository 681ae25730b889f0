"""Resources hand the core its context; secrets stay in the environment of the run.

dbops.yaml is read once per code-location load: ``build_definitions`` parses it, registers the
snapshot here, and every asset, check and sensor of that load uses the same parsed config (so a
run never sees a target its definitions were not built from). Runs started in another process
load the code location again; ``CONFIG_TAG`` on their jobs says which file they were launched from.
"""

import os
from pathlib import Path

import dagster as dg

from dbops_pipelines.config import DEFAULT_CONFIG_PATH, FleetConfig, load_config_snapshot
from dbops_pipelines.context import FleetContext

_SNAPSHOTS: dict[str, tuple[FleetConfig, str]] = {}   # resolved path -> (config, sha256) of this process's load


def _key(path: str) -> str:
    return str(Path(path).resolve())


def register_snapshot(path: str) -> tuple[FleetConfig, str]:
    """Read dbops.yaml for a code-location load and keep it as this process's snapshot."""
    snapshot = load_config_snapshot(path)
    _SNAPSHOTS[_key(path)] = snapshot
    return snapshot


def _snapshot(path: str) -> tuple[FleetConfig, str]:
    return _SNAPSHOTS.get(_key(path)) or register_snapshot(path)


class DbopsFleet(dg.ConfigurableResource):
    """The fleet described by dbops.yaml. Only the path is Dagster config, never a secret."""

    config_path: str = os.environ.get("DBOPS_CONFIG", DEFAULT_CONFIG_PATH)

    def config(self) -> FleetConfig:
        return _snapshot(self.config_path)[0]

    def snapshot_sha256(self) -> str:
        return _snapshot(self.config_path)[1]

    def context(self) -> FleetContext:
        """The fleet context for one run or check evaluation: config, store and keys, built once."""
        return FleetContext(self.config())
