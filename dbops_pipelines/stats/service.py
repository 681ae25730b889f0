"""One stats tick for a set of targets: what the Dagster asset and `dbops stats` both call.

Snapshots are taken in parallel (each target is its own connection and mostly waits on its
server) and each is saved as soon as it is taken, so one target that is down, or a save that
fails, never costs another target its snapshot. When the metrics database cannot be opened the
snapshots are still taken and returned (the Dagster run shows their numbers), each marked unsaved
with the reason, and the caller fails loudly.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from dbops_pipelines.config import FleetConfig
from dbops_pipelines.context import FleetContext
from dbops_pipelines.errors import ConfigError, DbopsError, StatsFailed
from dbops_pipelines.redact import redact
from dbops_pipelines.stats.history import MetricsStore
from dbops_pipelines.stats.model import Snapshot
from dbops_pipelines.stats.snapshot import take_snapshot
from dbops_pipelines.storage.namespaces import REPORTS

MAX_WORKERS = 8


@dataclass
class TargetOutcome:
    target: str
    snapshot: Snapshot | None = None
    saved: bool = False
    error: DbopsError | None = None     # why it was not taken, or not saved


def require_metrics(cfg: FleetConfig) -> None:
    if cfg.metrics is None:
        raise ConfigError("no metrics database is configured, so stats history cannot be kept",
                          "add a top-level `metrics:` section with a `dsn` (docs/stats.md#history), "
                          "or run `dbops stats TARGET --no-save` for a one-off snapshot")


def open_store(cfg: FleetConfig, for_writing: bool = True, retries: int | None = None) -> MetricsStore:
    """The metrics database; for writing, its schema and the partitions ahead are made sure of
    first. Readers (the alert sensor, history, reports) create nothing: they need no DDL right,
    and a schema not made yet reads as empty."""
    require_metrics(cfg)
    store = MetricsStore.open(cfg.metrics, retries=cfg.defaults.connect_retries if retries is None else retries)
    if for_writing:
        try:
            store.ensure_schema(datetime.now(timezone.utc))
        except BaseException:
            store.close()
            raise
    return store


def _completed(futures, on_interrupt):
    try:
        yield from as_completed(futures)
    except BaseException:
        on_interrupt()
        raise


def snapshot_targets(cfg: FleetConfig, targets: list[str], save: bool = True,
                     log: Callable[[str], None] = lambda line: None) -> list[TargetOutcome]:
    """Take (and, with ``save``, keep) one snapshot of every target in ``targets``."""
    outcomes = {t: TargetOutcome(t) for t in targets}
    store, store_error = None, None
    if save:
        try:
            store = open_store(cfg)
        except DbopsError as exc:
            store_error = exc
            log(f"ERROR the metrics database cannot be used: {redact(exc.message)}; snapshots are taken but not kept")
    try:
        previous: dict[str, Snapshot] = {}
        if store is not None:
            try:
                previous = store.latest_all(list(targets))
            except DbopsError as exc:
                store_error, store = exc, None
                log(f"ERROR cannot read the previous snapshots: {redact(exc.message)}")
        with ThreadPoolExecutor(max_workers=max(1, min(MAX_WORKERS, len(targets)))) as pool:
            futures = {pool.submit(take_snapshot, cfg, t, previous.get(t)): t for t in targets}
            # Interrupted (Ctrl-C, SIGTERM, Terminate in the UI): targets not started are dropped;
            # those under way end within their statement timeout, and nothing half-taken is kept.
            stop_pending = lambda: [f.cancel() for f in futures]  # noqa: E731
            for future in _completed(futures, on_interrupt=stop_pending):
                outcome = outcomes[futures[future]]
                try:
                    outcome.snapshot = future.result()
                except DbopsError as exc:
                    outcome.error = exc
                    log(f"ERROR {outcome.target}: {redact(exc.message)}")
                    continue
                except Exception as exc:  # noqa: BLE001 - one target's bug must not cost the others their snapshots
                    outcome.error = StatsFailed(
                        f"the snapshot of {outcome.target} failed unexpectedly: {type(exc).__name__}: {redact(str(exc))}",
                        "this is a bug in dbops: please report it with the target's stats settings; the other "
                        "targets' snapshots were kept")
                    log(f"ERROR {outcome.target}: {outcome.error.message}")
                    continue
                if store is not None:
                    try:
                        store.save(outcome.snapshot)   # one transaction per snapshot: all or nothing
                        outcome.saved = True
                    except DbopsError as exc:
                        outcome.error = exc
                        log(f"ERROR {outcome.target}: snapshot taken but not kept: {redact(exc.message)}")
                elif store_error is not None:
                    outcome.error = store_error
        if store is not None:
            # Keep history bounded and partitions ahead on every tick: cheap when there is nothing
            # to drop, and never a reason to lose the snapshots just saved.
            try:
                dropped = store.apply_retention(datetime.now(timezone.utc))
                if dropped:
                    log(f"history retention dropped {len(dropped)} partition(s): {', '.join(dropped)}")
            except DbopsError as exc:
                log(f"ERROR history retention failed (snapshots were kept): {redact(exc.message)}")
    finally:
        if store is not None:
            store.close()
    return [outcomes[t] for t in targets]


def report_key(target: str, end: datetime) -> str:
    """reports/stats/<target>/<end, UTC>.html: beside the backups, in the store's reports namespace."""
    return f"{REPORTS}stats/{target}/{end.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}.html"


def store_report(ctx: FleetContext, target: str, end: datetime, window: timedelta) -> tuple[str, int]:
    """Render the report of ``target`` over ``window`` ending at ``end`` and keep it in the store
    (create-only: an existing report is never overwritten). Returns (location, bytes)."""
    from dbops_pipelines.stats.report import build_report

    with open_store(ctx.config, for_writing=False) as store:
        html = build_report(store, target, end - window, end).encode()
    key = report_key(target, end)
    ctx.store.put_bytes(key, html)
    return ctx.store.location(key), len(html)
