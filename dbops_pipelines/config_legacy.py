"""The flat dbops.yaml of releases before feature blocks, moved into today's shape.

Operators' files must keep loading on upgrade, so the old keys are still read: each is moved to
its new place before validation and one DeprecationWarning lists every move. Giving a key in
both places is an error, because dbops could only guess which one the operator meant.
"""

from __future__ import annotations

import copy
import warnings

from dbops_pipelines.errors import ConfigError

# Old key -> new key, relative to one target or to `defaults`.
TARGET_MOVES = {k: f"backup.{k}" for k in
                ("kind", "tables", "exclude_table_data", "schedule", "timezone", "retention", "rpo_hours")}
TARGET_MOVES["server"] = "cluster"
DEFAULTS_MOVES = {k: f"backup.{k}" for k in
                  ("schedule", "timezone", "retention", "rpo_hours", "compression_level", "run_retries",
                   "retry_delay_seconds")}
DOCS = "docs/configuration.md#the-flat-shape-of-earlier-releases"


def _move(block: dict, moves: dict[str, str], where: str, done: list[tuple[str, str]]) -> None:
    for old, new in moves.items():
        if old not in block:
            continue
        *parents, leaf = new.split(".")
        dest = block
        for p in parents:
            dest = dest.setdefault(p, {})
            if not isinstance(dest, dict):
                raise ConfigError(f"{where}.{p} must be a mapping", f"see {DOCS}")
        if leaf in dest:
            raise ConfigError(f"{where}.{old} and {where}.{new} are both set",
                              f"keep only {where}.{new} (the old flat key is read only for compatibility)")
        dest[leaf] = block.pop(old)
        done.append((f"{where}.{old}", f"{where}.{new}"))


def migrate(raw: dict) -> tuple[dict, list[tuple[str, str]]]:
    """``raw`` in today's shape, and the moves made: ("targets.app.kind", "targets.app.backup.kind")."""
    raw = copy.deepcopy(raw)
    done: list[tuple[str, str]] = []
    if isinstance(raw.get("defaults"), dict):
        _move(raw["defaults"], DEFAULTS_MOVES, "defaults", done)
    legacy_servers = []
    for name, target in (raw.get("targets") or {}).items() if isinstance(raw.get("targets"), dict) else ():
        if isinstance(target, dict):
            had_server = "server" in target
            _move(target, TARGET_MOVES, f"targets.{name}", done)
            if had_server:
                legacy_servers.append(target["cluster"])
    # `server:` named a concurrency group that was never declared; `cluster:` must name a declared
    # cluster, so the old values are declared here with default settings.
    if legacy_servers:
        clusters = raw.setdefault("clusters", {})
        if isinstance(clusters, dict):
            for server in legacy_servers:
                if isinstance(server, str):
                    clusters.setdefault(server, {})
    return raw, done


def as_written(path: str, done: list[tuple[str, str]]) -> str:
    """An error's key path as the operator wrote it, so it can be found in the file."""
    for old, new in done:
        if path == new or path.startswith(new + "."):
            return old + path[len(new):]
    return path


def warn_moves(done: list[tuple[str, str]], source: str) -> None:
    if done:
        servers = any(new.endswith(".cluster") for _, new in done)
        warnings.warn(f"{source} uses the flat shape of earlier releases; it still works, but move "
                      + ", ".join(f"{old} to {new}" for old, new in done) + (" (and declare each former `server` under clusters:)" if servers else "")
                      + f"; see {DOCS}", DeprecationWarning, stacklevel=3)
