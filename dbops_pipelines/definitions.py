"""Assembles the Dagster layer from dbops.yaml ($DBOPS_CONFIG, default ./dbops.yaml).

dbops.yaml is read once per code-location load; every feature found in defs/ (a module with a
SPEC) contributes its definitions for each target it applies to, then the one alert sensor, the
pool-limit sensor and the resource are added. A config that cannot be loaded makes the code
location fail to load with the config error's message, visible in the UI: loud, rather than a
fleet silently without backups.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from dbops_pipelines.config import config_path
from dbops_pipelines.defs.alerts import build_alert_defs
from dbops_pipelines.defs.pools import build_pool_defs
from dbops_pipelines.defs.resources import DbopsFleet, register_snapshot
from dbops_pipelines.defs.spec import FeatureSpec, discover_features


def build_definitions(path: str | Path | None = None, specs: list[FeatureSpec] | None = None) -> dg.Definitions:
    """``specs`` defaults to every feature in defs/; tests pass their own to prove a feature plugs in."""
    path = str(path or config_path())
    cfg, sha256 = register_snapshot(path)
    specs = discover_features() if specs is None else specs
    features = dg.Definitions.merge(*(d for spec in specs for d in spec.definitions(cfg, sha256)))
    return dg.Definitions.merge(
        features,
        build_alert_defs(cfg, specs, features),
        build_pool_defs(cfg),
        dg.Definitions(resources={"dbops": DbopsFleet(config_path=path)}),
    )


@dg.definitions
def defs() -> dg.Definitions:
    # Built when Dagster loads the code location, not on import, so tests and tools can import
    # build_definitions without a dbops.yaml in the working directory.
    return build_definitions()
