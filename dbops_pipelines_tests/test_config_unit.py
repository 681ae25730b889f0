"""Config parsing, redaction and S3 part sizing: pure logic, no I/O beyond tmp files."""

from __future__ import annotations

import pytest

from dbops_pipelines.backup.integrity import _parse_toc, tables_with_data
from dbops_pipelines.config import load_config, parse_config, redact
from dbops_pipelines.errors import ConfigError
from dbops_pipelines.storage.s3 import MIB, PART_LIMIT, part_size_for


@pytest.mark.parametrize("text, secret", [
    ("postgresql://app:s3cr3t@db1:5432/app", "s3cr3t"),
    ("could not connect: postgres://u:p%40ss@h/db failed", "p%40ss"),
    ("host=db1 password=hunter2 user=x", "hunter2"),
    ("host=db1 password='quoted secret' user=x", "quoted secret"),
    ("PASSWORD = abc123", "abc123"),
])
def test_redact_removes_passwords(text, secret):
    out = redact(text)
    assert secret not in out and "***" in out


def test_redact_leaves_passwordless_dsn_alone():
    assert redact("postgresql://dbops@db1.internal:5432/app") == "postgresql://dbops@db1.internal:5432/app"


def test_minimal_config_and_defaults(tmp_path):
    path = tmp_path / "dbops.yaml"
    path.write_text("storage:\n  url: file://backups\ntargets:\n  app:\n    dsn: postgresql://dbops@db1:5432/app\n")
    cfg = load_config(path)
    assert cfg.storage.url == f"file://{tmp_path / 'backups'}"  # relative to the config file
    assert cfg.schedule_for("app") == ("0 2 * * *", "UTC")
    assert cfg.retention_for("app").keep_daily == 7 and cfg.retention_for("app").min_age_days == 30
    assert cfg.server_of("app") == "db1:5432"
    assert cfg.encryption.key_env == "DBOPS_BACKUP_KEY"


def test_per_target_overrides():
    cfg = parse_config({"targets": {"a": {"dsn": "postgresql://x@h/a", "schedule": "15 1 * * *", "timezone": "Asia/Tokyo",
                                          "retention": {"keep_daily": 3}, "server": "primary"}}})
    assert cfg.schedule_for("a") == ("15 1 * * *", "Asia/Tokyo")
    assert cfg.retention_for("a").keep_daily == 3 and cfg.retention_for("a").keep_monthly == 12
    assert cfg.server_of("a") == "primary"


@pytest.mark.parametrize("raw, message", [
    ({"targets": {"App-1": {"dsn": "postgresql://x@h/a"}}}, "lower-case"),
    ({"targets": {"a": {"dsn": "postgresql://x:pw@h/a"}}}, "contains a password"),
    ({"storage": {"url": "ftp://x"}}, "file:// or s3://"),
    ({"targets": {"a": {"dsn": "postgresql://x@h/a", "kind": "incremental"}}}, "targets.a.kind"),
    ({"targets": {"a": {"dsn": "postgresql://x@h/a", "retention": {"keep_daily": -1}}}}, "keep_daily"),
    ({"stroage": {}}, "stroage"),
])
def test_invalid_config_is_explained(raw, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_config(raw)
    assert "pw@" not in str(err.value)


def test_unknown_target_lists_known_ones():
    cfg = parse_config({"targets": {"app": {"dsn": "postgresql://x@h/a"}}})
    with pytest.raises(ConfigError, match="targets in the config: app"):
        cfg.target("billing")


def test_missing_config_file_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="DBOPS_CONFIG"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("hint", [None, 0, 10 * MIB, 5 << 30, 100 << 30, 2 << 40])
def test_part_sizes_fit_1000_parts_even_at_several_times_the_hint(hint):
    sizes = [part_size_for(n, hint) for n in range(PART_LIMIT)]
    assert all(s >= 5 * MIB for s in sizes)
    assert sum(sizes) >= max(4 * (hint or 0), 40 << 30)
    assert sizes[0] <= max(8 * MIB, (hint or 0) // 500 + MIB)  # small objects don't get huge parts


def test_toc_listing_parse():
    listing = """;
; Archive created at 2026-11-24
3; 2615 2200 SCHEMA - public pg_database_owner
215; 1259 16390 TABLE public users postgres
3345; 0 16390 TABLE DATA public users postgres
3346; 0 16391 TABLE DATA sales order items postgres
"""
    entries, data = _parse_toc(listing)
    assert entries == 4
    assert tables_with_data(data, ["public.users", "sales.order items", "public.user"]) == (
        ["public.users", "sales.order items"], ["public.user"])
