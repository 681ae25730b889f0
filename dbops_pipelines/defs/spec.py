"""What a feature hands the Dagster layer, and the few helpers every feature's assets share.

A feature is one module in ``defs/`` with a module-level ``SPEC``: how to build one target's
assets, checks, job and schedule, and which alert conditions it judges from the store.
``definitions.py`` finds every SPEC by itself, and the alert sensor finds runs and checks by
tag and asset key, so a new feature adds its file and edits none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import dagster as dg

from dbops_pipelines.alerts.dispatch import Observation
from dbops_pipelines.config import FleetConfig
from dbops_pipelines.context import FleetContext
from dbops_pipelines.defs.names import CONFIG_TAG
from dbops_pipelines.defs.resources import DbopsFleet
from dbops_pipelines.errors import DatabaseUnreachable, DbopsError, StorageError
from dbops_pipelines.interrupts import sigterm_as_interrupt
from dbops_pipelines.redact import redact

# What a later attempt may fix by itself; everything else needs a person.
TRANSIENT = (DatabaseUnreachable, StorageError)


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    # One target's definitions: assets, checks, jobs, schedules.
    build: Callable[[FleetConfig, str, str], dg.Definitions]            # (cfg, target, config_sha256)
    # Alert conditions judged from the store each sensor tick (silence, staleness).
    conditions: Callable[[FleetContext, str, datetime], list[Observation]] | None = None
    # Whether the feature applies to a target (e.g. only when its section is configured).
    applies: Callable[[FleetConfig, str], bool] = lambda cfg, target: True


def as_failure(exc: DbopsError, retry: bool = False) -> dg.Failure:
    """A core error as a step failure whose description says what to do. Only transient errors
    (``retry=True``) let the step's RetryPolicy try again."""
    text = redact(exc.message) + (f"\n\nWhat to do: {exc.hint}" if exc.hint else "")
    return dg.Failure(description=text, metadata={"error": type(exc).__name__}, allow_retries=retry)


def fail_loudly(description: str, error: str) -> dg.Failure:
    return dg.Failure(description=redact(description), metadata={"error": error}, allow_retries=False)


@contextmanager
def core_call(context, transient_retries: bool = False) -> Iterator[None]:
    """Around a call into the core from an asset or check body: SIGTERM (a run terminated from
    the UI) unwinds like Ctrl-C so child processes, temp files and scratch databases are cleaned
    up, and core errors become failures that say what to do. Never spans a ``yield``."""
    try:
        with sigterm_as_interrupt():
            yield
    except TRANSIENT as exc:
        context.log.error(redact(exc.message))
        raise as_failure(exc, retry=transient_retries) from None
    except DbopsError as exc:
        raise as_failure(exc) from None


def fleet_context(context, dbops: DbopsFleet) -> FleetContext:
    """The fleet context for one step, from the dbops.yaml snapshot of this code location. A run
    launched from an older snapshot is told so in its log: it runs with the current file."""
    ctx = dbops.context()
    launched_with = context.run.tags.get(CONFIG_TAG)
    if launched_with and launched_with != dbops.snapshot_sha256():
        context.log.warning(
            "dbops.yaml changed between the launch of this run and its start; the run uses the file as it is "
            "now. Reload the code location (Deployment → Reload) so the UI shows the same definitions.")
    return ctx


def discover_features() -> list[FeatureSpec]:
    """Every module in defs/ with a module-level SPEC, in name order: adding a feature's file is
    enough for its definitions and alert conditions to be loaded."""
    import importlib
    import pkgutil

    import dbops_pipelines.defs as package

    specs = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        spec = getattr(module, "SPEC", None)
        if isinstance(spec, FeatureSpec):
            specs.append(spec)
    return specs
