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
from dbops_pipelines.errors import DatabaseUnreachable, DbopsError, ObjectExists, StorageError
from dbops_pipelines.interrupts import sigterm_as_interrupt
from dbops_pipelines.redact import redact

# What a later attempt may fix by itself; everything else needs a person.
TRANSIENT = (DatabaseUnreachable, StorageError)


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    # One target's definitions: assets, checks, jobs, schedules (None: a fleet-only feature).
    build: Callable[[FleetConfig, str, str], dg.Definitions] | None     # (cfg, target, config_sha256)
    # Alert conditions judged from the store each sensor tick (silence, staleness).
    conditions: Callable[[FleetContext, str, datetime], list[Observation]] | None = None
    # Whether the feature applies to a target (e.g. only when its section is configured).
    applies: Callable[[FleetConfig, str], bool] = lambda cfg, target: True
    # For features whose work is done for many targets at once (one run per tick for the whole
    # fleet, not one per target): definitions and conditions over every target it applies to.
    build_fleet: Callable[[FleetConfig, list[str], str], dg.Definitions] | None = None
    fleet_conditions: Callable[[FleetContext, list[str], datetime], list[Observation]] | None = None
    # The alert conditions its conditions raise (the part of an alert key after the target): when
    # the feature stops applying to a target, its open alerts of these are resolved, not reminded forever.
    alert_conditions: tuple[str, ...] = ()

    def targets(self, cfg: FleetConfig) -> list[str]:
        return [t for t in sorted(cfg.targets) if self.applies(cfg, t)]

    def definitions(self, cfg: FleetConfig, config_sha256: str) -> list[dg.Definitions]:
        targets = self.targets(cfg)
        out = [self.build(cfg, t, config_sha256) for t in targets] if self.build else []
        if self.build_fleet is not None and targets:
            out.append(self.build_fleet(cfg, targets, config_sha256))
        return out


def as_failure(exc: DbopsError) -> dg.Failure:
    """A core error as a step failure whose description says what to do."""
    text = redact(exc.message) + (f"\n\nWhat to do: {exc.hint}" if exc.hint else "")
    return dg.Failure(description=text, metadata={"error": type(exc).__name__}, allow_retries=False)


def fail_loudly(description: str, error: str) -> dg.Failure:
    return dg.Failure(description=redact(description), metadata={"error": error}, allow_retries=False)


@contextmanager
def core_call(context, retry: dg.RetryPolicy | None = None) -> Iterator[None]:
    """Around a call into the core from an asset or check body. Never spans a ``yield``.

    - SIGTERM (a service manager or container runtime stopping the run worker) unwinds like
      Ctrl-C, so child processes, temp files and scratch databases are cleaned up by the core's
      own ``finally``s. (Dagster's "Terminate run" interrupts the step with SIGINT, and maps
      SIGTERM the same way while a step runs: both reach the same clean-up.)
    - Core errors become failures that say what to do.
    - Only transient errors (server or store unreachable) are retried, and only where the caller
      passes ``retry``: the step asks Dagster for the retry (``RetryRequested``) with the delays of
      that RetryPolicy. The policy is deliberately not attached to the step: Dagster retries a
      step with a policy after *any* exception and after an interrupt too, which for a backup
      would mean another backup after the operator pressed Terminate, or after one was recorded.
    """
    try:
        with sigterm_as_interrupt():
            yield
    except TRANSIENT as exc:
        context.log.error(redact(exc.message))
        attempt = context.retry_number
        if retry is not None and attempt < retry.max_retries and not isinstance(exc, ObjectExists):
            raise dg.RetryRequested(max_retries=retry.max_retries,
                                    seconds_to_wait=retry.calculate_delay(attempt + 1)) from as_failure(exc)
        raise as_failure(exc) from None
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
