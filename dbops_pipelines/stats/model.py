"""The data model of a stats snapshot: plain data, JSON-able, stored as is in the metrics database.

A snapshot has one dict per *section* (statements, database, activity, tables, health). Each
section module (stats/sections/) owns the shape of its dict and supplies four pure functions
besides the query: ``rates`` (counters to per-second rates against the previous snapshot, never
negative or inflated across a reset), ``samples`` (the scalar series that are stored, plotted and
exported), and ``findings`` (judged against the target's thresholds).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import psycopg

from dbops_pipelines.findings import Finding

SampleKind = Literal["gauge", "counter"]


@dataclass(frozen=True)
class Sample:
    """One number of a snapshot, named the Prometheus way: base units (``_bytes``, ``_seconds``,
    ``_ratio``), counters end in ``_total``. Labels only from bounded sets (states, top-N objects).
    The exporter prefixes ``dbops_pg_`` and adds the ``target`` label."""

    name: str
    value: float
    labels: tuple[tuple[str, str], ...] = ()
    kind: SampleKind = "gauge"
    help: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "value": self.value, "labels": dict(self.labels), "kind": self.kind, "help": self.help}

    @classmethod
    def from_dict(cls, d: dict) -> "Sample":
        return cls(d["name"], float(d["value"]), tuple(sorted((d.get("labels") or {}).items())),
                   d.get("kind", "gauge"), d.get("help", ""))


@dataclass(frozen=True)
class CollectEnv:
    """What every section's query may need, fixed once per snapshot."""

    server_version_num: int        # 150004; guard version-specific columns with it
    top_n: int                     # statements per ranking, tables and indexes per list
    connect_seconds: float         # how long this snapshot took to connect
    settings: Any = None           # the target's StatsSettings (config.py), thresholds included


@dataclass(frozen=True)
class Section:
    name: str
    # Run inside one read-only transaction with the snapshot's statement_timeout; may raise
    # psycopg errors (the caller records the section as not collected and carries on).
    collect: Callable[[psycopg.Connection, CollectEnv], dict]
    # (previous data or None, current data, seconds between them) -> rates; {} without a previous.
    rates: Callable[[dict | None, dict, float], dict]
    samples: Callable[[dict, dict], list[Sample]]
    # (target, data, rates, thresholds) -> findings
    findings: Callable[[str, dict, dict, Any], list[Finding]]


@dataclass
class Snapshot:
    target: str
    taken_at: datetime                       # the server's clock (now() of the snapshot's transaction)
    server_version_num: int
    connect_seconds: float
    duration_seconds: float
    sections: dict[str, dict] = field(default_factory=dict)
    rates: dict[str, dict] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)     # section -> why it was not collected
    interval_seconds: float | None = None                    # since the previous snapshot the rates use
    # Help texts by sample name, as a stored snapshot keeps them (its samples are rows of their own).
    sample_help: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "target": self.target, "taken_at": self.taken_at.isoformat(),
            "server_version_num": self.server_version_num,
            "connect_seconds": self.connect_seconds, "duration_seconds": self.duration_seconds,
            "interval_seconds": self.interval_seconds,
            "sections": self.sections, "rates": self.rates,
            "samples": [s.to_dict() for s in self.samples],
            "findings": [f.to_dict() for f in self.findings],
            "errors": self.errors,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Snapshot":
        return cls(
            target=d["target"], taken_at=datetime.fromisoformat(d["taken_at"]),
            server_version_num=d["server_version_num"], connect_seconds=d["connect_seconds"],
            duration_seconds=d["duration_seconds"], sections=d.get("sections", {}), rates=d.get("rates", {}),
            samples=[Sample.from_dict(s) for s in d.get("samples", [])],
            findings=[Finding.from_dict(f) for f in d.get("findings", [])],
            errors=d.get("errors", {}), interval_seconds=d.get("interval_seconds"),
            sample_help=d.get("sample_help", {}),
        )

    def sample(self, name: str, **labels: str) -> float | None:
        want = tuple(sorted(labels.items()))
        return next((s.value for s in self.samples if s.name == name and s.labels == want), None)
