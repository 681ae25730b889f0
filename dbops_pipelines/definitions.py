"""Assembles the Dagster layer from dbops.yaml ($DBOPS_CONFIG, default ./dbops.yaml).

A config that cannot be loaded makes the code location fail to load with the config error's
message, visible in the UI: loud, rather than a fleet silently without backups.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from dbops_pipelines.config import config_path, load_config
from dbops_pipelines.defs.alerts import build_alert_defs
from dbops_pipelines.defs.backups import build_backup_defs
from dbops_pipelines.defs.resources import DbopsFleet
from dbops_pipelines.defs.verification import build_verification_defs


def build_definitions(path: str | Path | None = None) -> dg.Definitions:
    path = str(path or config_path())
    cfg = load_config(path)
    return dg.Definitions.merge(
        build_backup_defs(cfg),
        build_verification_defs(cfg),
        build_alert_defs(cfg, path),
        dg.Definitions(resources={"dbops": DbopsFleet(config_path=path)}),
    )


@dg.definitions
def defs() -> dg.Definitions:
    # Built when Dagster loads the code location, not on import, so tests and tools can import
    # build_definitions without a dbops.yaml in the working directory.
    return build_definitions()
