"""Concurrency pools per PostgreSQL server: `clusters.<name>.pool_limit` in dbops.yaml applied to
the Dagster instance.

Dagster keeps pool limits in the instance (what `dagster instance concurrency set` writes), not in
code, so a small sensor makes the instance match dbops.yaml: on each tick it sets the limit of
every pool whose cluster declares `pool_limit` and differs from it. Pools without a configured
limit keep `concurrency.pools.default_limit` of dagster.yaml (or what an operator set by hand).
"""

import dagster as dg

from dbops_pipelines.config import FleetConfig
from dbops_pipelines.defs import names
from dbops_pipelines.defs.resources import DbopsFleet


def wanted_limits(cfg: FleetConfig) -> dict[str, int]:
    """Pool -> limit for every cluster with a configured pool_limit."""
    return {names.pool_name(name): c.pool_limit for name, c in sorted(cfg.clusters.items()) if c.pool_limit}


def apply_pool_limits(instance: dg.DagsterInstance, cfg: FleetConfig) -> list[str]:
    """Set each configured limit that differs in the instance; returns what changed."""
    storage = instance.event_log_storage
    changed = []
    for pool, limit in wanted_limits(cfg).items():
        current = storage.get_concurrency_info(pool).slot_count if pool in storage.get_concurrency_keys() else None
        if current != limit:
            storage.set_concurrency_slots(pool, limit)
            changed.append(f"{pool}: {current if current is not None else 'default'} -> {limit}")
    return changed


def build_pool_defs(cfg: FleetConfig) -> dg.Definitions:
    if not wanted_limits(cfg):
        return dg.Definitions()

    @dg.sensor(
        name=names.POOL_SENSOR, minimum_interval_seconds=300, default_status=dg.DefaultSensorStatus.RUNNING,
        description="Applies clusters.<name>.pool_limit from dbops.yaml to the Dagster instance's concurrency pools.",
    )
    def dbops_pool_limits(context: dg.SensorEvaluationContext, dbops: DbopsFleet) -> dg.SkipReason:
        changed = apply_pool_limits(context.instance, dbops.config())
        for line in changed:
            context.log.info(f"pool limit set: {line}")
        return dg.SkipReason("pool limits match dbops.yaml" if not changed else "; ".join(changed))

    return dg.Definitions(sensors=[dbops_pool_limits])
