"""Prometheus metrics from the stats history: ``dbops exporter --listen 127.0.0.1:9187``.

A scrape reads the latest stored snapshot of each target from the metrics database (one query,
cached for a few seconds so a burst of scrapes costs one) and never connects to the target
databases: Prometheus may scrape as often as it likes without adding load where it matters.
The values are those of the latest snapshot; ``dbops_pg_snapshot_age_seconds`` says how old.

Metric names:
- ``dbops_pg_<sample name>{target, <sample labels>}`` for every Sample (gauges as they are;
  counters typed as counters, their names ending in ``_total``). A sample label named
  ``target`` is exported as ``exported_target``, as Prometheus itself does.
- ``dbops_pg_snapshot_timestamp_seconds{target}``, ``dbops_pg_snapshot_age_seconds{target}``
- ``dbops_pg_findings{target, code, severity}``: open findings of the latest snapshot
- ``dbops_stats_exporter_up``: 1 when the metrics database answered this scrape, else 0 (and
  nothing else is exported: stale numbers would look current).
"""

from __future__ import annotations

import errno
import logging
import re
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import psycopg
from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dbops_pipelines.config import FleetConfig, MetricsSettings
from dbops_pipelines.errors import ConfigError, DbopsError
from dbops_pipelines.interrupts import sigterm_as_interrupt
from dbops_pipelines.redact import redact
from dbops_pipelines.stats.history import MetricsStore
from dbops_pipelines.stats.model import Snapshot

log = logging.getLogger(__name__)

PREFIX = "dbops_pg_"
CACHE_SECONDS = 5.0
_OWN_NAMES = {"snapshot_timestamp_seconds", "snapshot_age_seconds", "findings"}   # made here, not from samples
_METRIC_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_LISTEN = re.compile(r"(?:\[(?P<v6>[^\]]*)\]|(?P<host>[^:\[\]]*)):(?P<port>[0-9]{1,5})")
_LISTEN_HINT = "write host:port, e.g. 127.0.0.1:9187, [::1]:9187, or :9187 for every interface"


def _label_name(name: str) -> str | None:
    name = "exported_target" if name == "target" else name
    return name if _LABEL_NAME.fullmatch(name) and not name.startswith("__") else None


def build_families(snapshots: dict[str, Snapshot], now: float) -> list[Metric]:
    """The metric families of the latest snapshot per target; pure. One family per metric name,
    its label set the union over all its samples ("" where a sample lacks one), so a name keeps
    the same labels across targets."""
    groups: dict[str, dict] = {}
    for target in sorted(snapshots):
        for s in snapshots[target].samples:
            base = s.name.removesuffix("_total") if s.kind == "counter" else s.name
            labels = {_label_name(str(k)): str(v) for k, v in s.labels}
            if not _METRIC_NAME.fullmatch(s.name) or base in _OWN_NAMES or None in labels:
                log.warning("sample %r of target %s is not exported: its name or a label name is not valid "
                            "in Prometheus", s.name, target)
                continue
            group = groups.setdefault(base, {"kind": s.kind, "help": "", "keys": set(), "points": []})
            if group["kind"] != s.kind:
                log.warning("sample %r of target %s is a %s, elsewhere a %s: not exported", s.name, target,
                            s.kind, group["kind"])
                continue
            group["help"] = group["help"] or s.help
            group["keys"].update(labels)
            group["points"].append((target, labels, float(s.value)))
    families: list[Metric] = []
    for base, group in sorted(groups.items()):
        keys = sorted(group["keys"])
        kind = CounterMetricFamily if group["kind"] == "counter" else GaugeMetricFamily
        family = kind(PREFIX + base, group["help"] or f"{base} from the latest stats snapshot", labels=["target", *keys])
        seen: set[tuple[str, ...]] = set()
        for target, labels, value in group["points"]:
            values = (target, *(labels.get(k, "") for k in keys))
            if values not in seen:        # a series twice in one scrape is an error to Prometheus
                seen.add(values)
                family.add_metric(list(values), value)
        families.append(family)
    families += _snapshot_families(snapshots, now)
    return families


def _snapshot_families(snapshots: dict[str, Snapshot], now: float) -> Iterable[Metric]:
    taken = GaugeMetricFamily(PREFIX + "snapshot_timestamp_seconds",
                              "When the latest stored stats snapshot was taken (Unix time)", labels=["target"])
    age = GaugeMetricFamily(PREFIX + "snapshot_age_seconds",
                            "How old the latest stored stats snapshot is at this scrape", labels=["target"])
    findings = GaugeMetricFamily(PREFIX + "findings", "Open findings of the latest stats snapshot",
                                 labels=["target", "code", "severity"])
    for target in sorted(snapshots):
        snap = snapshots[target]
        taken.add_metric([target], snap.taken_at.timestamp())
        age.add_metric([target], max(0.0, now - snap.taken_at.timestamp()))
        counts: dict[tuple[str, str], int] = {}
        for f in snap.findings:
            counts[(f.code, f.severity)] = counts.get((f.code, f.severity), 0) + 1
        for (code, severity), n in sorted(counts.items()):
            findings.add_metric([target, code, severity], n)
    return [taken, age, findings]


class LatestSnapshotsCollector(Collector):
    """Metrics of the latest stored snapshot of each target, read at most once per ``cache_seconds``."""

    def __init__(self, settings: MetricsSettings, targets: list[str], cache_seconds: float = CACHE_SECONDS):
        self.settings = settings
        self.targets = list(targets)
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()      # concurrent scrapes wait for the one query in flight
        self._fetched_at: float | None = None
        self._cached: tuple[bool, dict[str, Snapshot]] = (False, {})

    def _latest(self) -> tuple[bool, dict[str, Snapshot]]:
        with self._lock:
            if self._fetched_at is not None and time.monotonic() - self._fetched_at < self.cache_seconds:
                return self._cached
            try:
                with MetricsStore.open(self.settings, retries=0) as store:
                    self._cached = (True, store.latest_all(self.targets))
            except (DbopsError, psycopg.Error) as exc:
                log.warning("stats exporter: the metrics database did not answer, exporting "
                            "dbops_stats_exporter_up 0: %s", " ".join(redact(str(exc)).split()))
                self._cached = (False, {})
            except Exception:   # a scrape must still answer: a bad stored document is logged, not a 500
                log.exception("stats exporter: reading the latest snapshots failed")
                self._cached = (False, {})
            self._fetched_at = time.monotonic()
            return self._cached

    def collect(self) -> Iterator[Metric]:
        up, snapshots = self._latest()
        yield from build_families(snapshots, time.time())
        yield GaugeMetricFamily("dbops_stats_exporter_up",
                                "1 when the metrics database answered this scrape, 0 when it did not",
                                value=1.0 if up else 0.0)


def stats_targets(cfg: FleetConfig) -> list[str]:
    return sorted(name for name in cfg.targets if cfg.stats_for(name).enabled)


def make_registry(cfg: FleetConfig, cache_seconds: float = CACHE_SECONDS) -> CollectorRegistry:
    """A registry holding only our collector: deterministic output, no process metrics."""
    if cfg.metrics is None:
        raise ConfigError("the exporter reads the stats history, and dbops.yaml has no metrics: section",
                          "add metrics: {dsn: postgresql://user@host/dbname} (docs/stats.md#history)")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LatestSnapshotsCollector(cfg.metrics, stats_targets(cfg), cache_seconds))
    return registry


def render(cfg: FleetConfig) -> bytes:
    """The exposition text of one scrape (``dbops exporter --once``)."""
    return generate_latest(make_registry(cfg))


def parse_listen(listen: str) -> tuple[str, int]:
    """("host", port) from "host:port", "[v6 address]:port" or ":port" (every IPv4 interface)."""
    m = _LISTEN.fullmatch(listen.strip())
    if not m or not 0 < int(m["port"]) < 65536:
        raise ConfigError(f"the listen address {listen!r} is not host:port with a port from 1 to 65535", _LISTEN_HINT)
    host = m["v6"] if m["v6"] is not None else m["host"]
    return host or "0.0.0.0", int(m["port"])


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args) -> None:   # one line per scrape would drown the log
        pass


def _bind(host: str, port: int, app, listen: str) -> WSGIServer:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]

        class Server(ThreadingMixIn, WSGIServer):
            address_family = family
            daemon_threads = True
        return make_server(host, port, app, Server, handler_class=_QuietHandler)
    except OSError as exc:
        why = "the address is already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise ConfigError(f"the exporter cannot listen on {listen}: {why}",
                          "choose another address with --listen, or stop what is listening there") from None


def serve(cfg: FleetConfig, listen: str, on_ready=None) -> None:
    """Serve /metrics on ``listen`` until interrupted (Ctrl-C or SIGTERM: returns cleanly).
    ``on_ready(url)`` is called once the address is bound, never before a bind that fails."""
    host, port = parse_listen(listen)
    server = _bind(host, port, make_wsgi_app(make_registry(cfg)), listen)
    log.info("stats exporter serving http://%s/metrics", listen)
    if on_ready is not None:
        on_ready(f"http://{listen}/metrics")
    try:
        with sigterm_as_interrupt():
            server.serve_forever()
    except KeyboardInterrupt:
        log.info("stats exporter stopped")
    finally:
        server.server_close()
