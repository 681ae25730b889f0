"""Config parsing (both shapes, strict validation), redaction, S3 part sizing and the archive
listing: pure logic, no I/O beyond tmp files and reading the repository's own example files."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from dbops_pipelines.backup.integrity import listed_ids, tables_with_data
from dbops_pipelines.backup.toc import Toc, TocEntry
from dbops_pipelines.config import load_config, parse_config, redact
from dbops_pipelines.errors import ConfigError
from dbops_pipelines.localdev.demo import write_fleet_config
from dbops_pipelines.pgtools import parse_dsn
from dbops_pipelines.storage.s3 import MIB, PART_LIMIT, part_size_for

ROOT = Path(__file__).resolve().parents[1]


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
    with pytest.warns(DeprecationWarning, match="targets.a.schedule to targets.a.backup.schedule"):  # the flat shape
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


def test_listed_ids_and_tables_with_data():
    listing = """;
; Archive created at 2026-11-24
3; 2615 2200 SCHEMA - public pg_database_owner
215; 1259 16390 TABLE public users postgres
3345; 0 16390 TABLE DATA public users postgres
3346; 0 16391 TABLE DATA sales order items postgres
"""
    assert listed_ids(listing) == [3, 215, 3345, 3346]
    toc = Toc((1, 14, 0), (TocEntry(3345, "TABLE DATA", "public", "users", ()),
                           TocEntry(3346, "TABLE DATA", "sales", "order items", ())))
    assert tables_with_data(toc, listed_ids(listing), ["public.users", "sales.order items", "public.user"]) == (
        ["public.users", "sales.order items"], ["public.user"])
    assert tables_with_data(toc, [3345], ["sales.order items"]) == ([], ["sales.order items"])  # not listed


# --- one config shape: the flat shape of earlier releases still loads, to the same settings ---

# Storage, keys and alerts are written alike in both shapes.
STORAGE = """
storage: {url: s3://dbops-backups/prod, s3_endpoint_url: https://s3.storage.internal, s3_region: eu-central-1}
encryption: {key_env: DBOPS_BACKUP_KEY, previous_key_envs: [DBOPS_BACKUP_KEY_2025]}
"""
ALERTS = """
alerts:
  ui_base_url: https://dagster.internal
  sinks:
    - {kind: webhook, url: "https://hooks.internal/dbops", headers_env: {Authorization: HOOK_AUTH}, min_severity: info}
"""

# docs/configuration.md's whole file as releases before feature blocks wrote it, plus the
# verification and alerts keys of docs/verification.md and docs/alerts.md.
FLAT = STORAGE + """
defaults:
  schedule: "0 2 * * *"
  timezone: UTC
  retention: {keep_daily: 7, keep_weekly: 4, keep_monthly: 12, min_age_days: 30}
  connect_retries: 3
  run_retries: 3
  retry_delay_seconds: 60
  owners: ["team:dbops"]
  pg_bin_dir: null
  compression_level: 3
  rpo_hours: 24
  verification: {schedule: "0 5 * * 0", jobs: 2}
""" + ALERTS + """
targets:
  app:
    dsn: postgresql://dbops_backup@db1.internal:5432/app
  billing:
    dsn: postgresql://dbops_backup@db1.internal:5432/billing
    kind: full
    exclude_table_data: [public.audit_events]
    schedule: "30 3 * * *"
    timezone: Europe/Berlin
    retention: {keep_daily: 14, keep_weekly: 8, keep_monthly: 24, min_age_days: 30}
    server: db1.internal:5432
    rpo_hours: 6
    verification: {max_age_days: 2}
  reporting_subset:
    dsn: postgresql://dbops_backup@db2.internal:5432/reporting
    kind: tables
    tables: [public.tenants, sales.orders]
"""

# The same fleet in today's shape.
GROUPED = STORAGE + """
defaults:
  connect_retries: 3
  owners: ["team:dbops"]
  pg_bin_dir: null
  backup:
    schedule: "0 2 * * *"
    timezone: UTC
    retention: {keep_daily: 7, keep_weekly: 4, keep_monthly: 12, min_age_days: 30}
    run_retries: 3
    retry_delay_seconds: 60
    compression_level: 3
    rpo_hours: 24
  verification: {schedule: "0 5 * * 0", jobs: 2}
clusters:
  "db1.internal:5432": {}
""" + ALERTS + """
targets:
  app:
    dsn: postgresql://dbops_backup@db1.internal:5432/app
  billing:
    dsn: postgresql://dbops_backup@db1.internal:5432/billing
    cluster: db1.internal:5432
    backup:
      kind: full
      exclude_table_data: [public.audit_events]
      schedule: "30 3 * * *"
      timezone: Europe/Berlin
      retention: {keep_daily: 14, keep_weekly: 8, keep_monthly: 24, min_age_days: 30}
      rpo_hours: 6
    verification: {max_age_days: 2}
  reporting_subset:
    dsn: postgresql://dbops_backup@db2.internal:5432/reporting
    backup: {kind: tables, tables: [public.tenants, sales.orders]}
"""


def effective(cfg) -> dict:
    """Everything the rest of the code reads, through the accessors it uses."""
    d = cfg.defaults
    out = {"storage": cfg.storage.model_dump(), "encryption": cfg.encryption.model_dump(),
           "alerts": cfg.alerts.model_dump(), "targets": sorted(cfg.targets),
           "defaults": [d.schedule, d.timezone, d.retention.policy(), d.connect_retries, d.run_retries,
                        d.retry_delay_seconds, d.owners, d.pg_bin_dir, d.compression_level, d.rpo_hours]}
    for name in cfg.targets:
        t = cfg.target(name)
        out[name] = [t.dsn, t.kind, t.tables, t.exclude_table_data, cfg.schedule_for(name), cfg.retention_for(name),
                     cfg.verification_for(name).model_dump(), cfg.rpo_hours_for(name), cfg.server_of(name),
                     cfg.dsn_for(name, "backup"), cfg.dsn_for(name, "monitor")]
    return out


def parse_text(text: str, tmp_path: Path, name: str = "dbops.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return load_config(path)


def no_warnings(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args)


def test_flat_and_grouped_shapes_give_the_same_settings(tmp_path):
    with pytest.warns(DeprecationWarning) as caught:
        flat = parse_text(FLAT, tmp_path, "flat.yaml")
    [warning] = caught
    text = str(warning.message)
    for move in ("targets.billing.kind to targets.billing.backup.kind", "defaults.run_retries to "
                 "defaults.backup.run_retries", "targets.billing.server to targets.billing.cluster"):
        assert move in text
    grouped = no_warnings(parse_text, GROUPED, tmp_path, "grouped.yaml")
    assert effective(flat) == effective(grouped)
    assert flat.model_dump() == grouped.model_dump()
    assert effective(flat)["billing"][8] == "db1.internal:5432" and effective(flat)["billing"][7] == 6
    assert flat.verification_for("billing").max_age_days == 2 and flat.verification_for("app").jobs == 2


def test_files_written_by_the_repository_load_without_a_warning(tmp_path):
    docker = no_warnings(load_config, ROOT / "docker" / "dbops.docker.yaml")
    assert docker.target("app").dsn == "postgresql://postgres@appdb:5432/app" and docker.server_of("app") == "appdb:5432"
    write_fleet_config(tmp_path / "demo.yaml", "postgresql://postgres@127.0.0.1:5999/app")
    demo = no_warnings(load_config, tmp_path / "demo.yaml")
    assert demo.target("app").kind == "full" and demo.schedule_for("app") == ("0 2 * * *", "UTC")


def docs_example() -> str:
    text = (ROOT / "docs" / "configuration.md").read_text()
    return re.search(r"## The whole file.*?```yaml\n(.*?)```", text, re.S)[1]


def test_the_documented_file_is_in_the_grouped_shape_and_means_what_the_docs_say(tmp_path):
    cfg = no_warnings(parse_text, docs_example(), tmp_path)
    assert cfg.server_of("app") == "db1" and cfg.server_of("reporting_subset") == "db2.internal:5432"
    assert cfg.cluster_of("app").pool_limit == 2 and cfg.cluster_of("reporting_subset").pool_limit is None
    assert cfg.target("billing").exclude_table_data == ["public.audit_events"]
    assert cfg.schedule_for("billing") == ("30 3 * * *", "Europe/Berlin") and cfg.rpo_hours_for("billing") == 6
    assert cfg.target("reporting_subset").kind == "tables"
    assert "user=billing_cleanup" in cfg.dsn_for("billing", "cleanup")
    assert "user=dbops_cleanup" in cfg.dsn_for("app", "cleanup")
    assert "user=dbops_monitor" in cfg.dsn_for("app", "monitor")
    assert cfg.target("app").stats is None and cfg.metrics.retention_days == 30
    billing, app = cfg.stats_for("billing"), cfg.stats_for("app")
    assert billing.thresholds.connections_high_count == 15 and app.thresholds.connections_high_count is None
    assert (app.schedule, app.top_n, app.thresholds.lock_wait_seconds) == ("*/5 * * * *", 50, 10)


def test_flat_retry_defaults_still_load_with_a_warning():
    # the shape conftest's write_config used before it moved to defaults.backup
    raw = {"defaults": {"connect_retries": 1, "run_retries": 0, "retry_delay_seconds": 0},
           "targets": {"app": {"dsn": "postgresql://x@h/app", "exclude_table_data": ["public.audit_events"]}}}
    with pytest.warns(DeprecationWarning, match="defaults.retry_delay_seconds"):
        cfg = parse_config(raw)
    assert (cfg.defaults.connect_retries, cfg.defaults.run_retries, cfg.defaults.retry_delay_seconds) == (1, 0, 0)
    assert cfg.target("app").exclude_table_data == ["public.audit_events"]


@pytest.mark.parametrize("target, message", [
    ({"kind": "schema", "backup": {"kind": "full"}}, "targets.a.kind and targets.a.backup.kind are both set"),
    ({"server": "p", "cluster": "p"}, "targets.a.server and targets.a.cluster are both set"),
])
def test_a_key_in_both_shapes_is_an_error(target, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"targets": {"a": {"dsn": "postgresql://x@h/a", **target}}})


def test_errors_in_flat_keys_name_the_key_as_written():
    with pytest.raises(ConfigError, match=r"targets\.a\.retention\.keep_daily: Input should be a valid integer"):
        parse_config({"targets": {"a": {"dsn": "postgresql://x@h/a", "retention": {"keep_daily": "7"}}}})


# --- clusters and roles -----------------------------------------------------------------------

def fleet(**target) -> dict:
    return {"clusters": {"db1": {"roles": {"monitor": "mon", "cleanup": "cleaner"}, "pool_limit": 3}},
            "targets": {"a": {"dsn": "postgresql://reader@db1.internal:5433/app?sslmode=require", **target}}}


def test_server_of_is_the_cluster_or_host_port():
    assert parse_config(fleet()).server_of("a") == "db1.internal:5433"
    cfg = parse_config(fleet(cluster="db1"))
    assert cfg.server_of("a") == "db1" and cfg.cluster_of("a").pool_limit == 3
    assert parse_config({"targets": {"a": {"dsn": "host=h2 dbname=a"}}}).server_of("a") == "h2:5432"


def test_dsn_for_swaps_in_the_role_of_the_purpose():
    cfg = parse_config(fleet(cluster="db1", roles={"cleanup": "app_cleanup"}))
    assert cfg.dsn_for("a", "backup") == cfg.target("a").dsn
    cleanup, monitor = conninfo_to_dict(cfg.dsn_for("a", "cleanup")), conninfo_to_dict(cfg.dsn_for("a", "monitor"))
    assert cleanup == {"user": "app_cleanup", "host": "db1.internal", "port": "5433", "dbname": "app",
                       "sslmode": "require"}                       # the target's role wins over the cluster's
    assert monitor["user"] == "mon" and monitor["dbname"] == "app"  # the cluster's role
    bare = parse_config(fleet())                                    # not on cluster db1: no roles
    assert bare.dsn_for("a", "monitor") == bare.target("a").dsn      # monitoring reads with the backup role
    with pytest.raises(ConfigError, match="no role for cleanup") as err:
        bare.dsn_for("a", "cleanup")
    assert "targets.a.roles.cleanup" in err.value.hint


@pytest.mark.parametrize("raw, message", [
    (fleet(cluster="db9"), r"targets\.a\.cluster: 'db9' is not declared under clusters \(declared: db1\)"),
    ({"clusters": {"db 1": {}}}, "cluster name"),
    ({"clusters": {"db1": {"pool_limt": 2}}}, r"clusters\.db1\.pool_limt: Extra inputs"),
    ({"clusters": {"db1": {"pool_limit": 0}}}, r"clusters\.db1\.pool_limit"),
    ({"clusters": {"db1": {"dsn": "postgresql://u:pw@h/postgres"}}}, r"clusters\.db1\.dsn: .*password"),
    (fleet(roles={"cleanup": "x y"}), r"targets\.a\.roles\.cleanup"),
    (fleet(roles={"writer": "w"}), r"targets\.a\.roles\.writer: Extra inputs"),
    (fleet(backup={"kinf": "full"}), r"targets\.a\.backup\.kinf: Extra inputs"),
    (fleet(stats={"enabeld": True}), r"targets\.a\.stats\.enabeld: Extra inputs"),
    (fleet(gdpr={"enabled": "yes"}), r"targets\.a\.gdpr\.enabled"),
    ({"defaults": {"backup": {"compresion_level": 1}}}, r"defaults\.backup\.compresion_level: Extra inputs"),
])
def test_clusters_roles_and_feature_blocks_are_strict(raw, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_config(raw)
    assert "pw@" not in str(err.value)


# --- hostile input ------------------------------------------------------------------------------

def test_duplicate_keys_are_an_error_with_their_line(tmp_path):
    # PyYAML keeps the last one silently: this file used to back up db2 and nobody noticed.
    text = "targets:\n  app:\n    dsn: postgresql://x@db1/app\n    dsn: postgresql://x@db2/app\n"
    with pytest.raises(ConfigError, match=r"line 4: key 'dsn' appears twice in one mapping \(first on line 3\)"):
        parse_text(text, tmp_path)
    with pytest.raises(ConfigError, match="key 'app' appears twice"):
        parse_text("targets:\n  app: {dsn: postgresql://x@h/a}\n  app: {dsn: postgresql://x@h/b}\n", tmp_path)


def test_yaml_merge_keys_may_still_be_overridden(tmp_path):
    text = ("base: &b {dsn: postgresql://x@h/a, backup: {kind: schema}}\n"
            "targets:\n  a: {<<: *b, dsn: postgresql://x@h/other}\n")
    with pytest.raises(ConfigError, match="base: Extra inputs"):   # not a duplicate-key error
        parse_text(text, tmp_path)


def test_yaml_syntax_errors_are_redacted(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML") as err:
        parse_text("targets:\n  a: {dsn: postgresql://u:hunter2@h/a\n", tmp_path)
    assert "hunter2" not in str(err.value)


@pytest.mark.parametrize("retention, rpo", [
    ({"keep_daily": True}, None), ({"keep_daily": "7"}, None), ({"keep_daily": 7.0}, None), ({}, "24"), ({}, True),
])
@pytest.mark.parametrize("flat", [True, False])
def test_numbers_are_numbers(retention, rpo, flat):
    # before: pydantic's lax mode read `true` as 1 and "7" as 7
    backup = {"retention": retention} | ({"rpo_hours": rpo} if rpo is not None else {})
    target = backup if flat else {"backup": backup}
    where = r"targets\.a\." + ("" if flat else r"backup\.")
    with pytest.raises(ConfigError, match=where + r"(retention\.keep_daily|rpo_hours): Input should be"):
        parse_config({"targets": {"a": {"dsn": "postgresql://x@h/a", **target}}})


def test_an_int_is_a_fine_float():
    cfg = parse_config({"defaults": {"backup": {"rpo_hours": 12}},
                        "targets": {"a": {"dsn": "postgresql://x@h/a", "backup": {"rpo_hours": 24}}}})
    assert cfg.rpo_hours_for("a") == 24.0 and cfg.defaults.rpo_hours == 12.0


@pytest.mark.parametrize("dsn, message", [
    ("", "DSN is empty"),
    ("   ", "DSN is empty"),
    ("postgresql://", "names no host, database or service"),
    ("mysql://u@h/db", "scheme is 'mysql'"),
    ("http://u@h/db", "scheme is 'http'"),
    ("host=db1 dbname", "libpq cannot parse"),
    ("host=db1 s3cretpassw0rd", "libpq cannot parse"),
    ("host=db1 port=fivefourthree", "port is not a number"),
    ("host=db1 port=70000", "port is not a number from 1 to 65535"),
    ("postgresql://db1/app?s3cretpassw0rd=x", r"libpq cannot parse the DSN \(invalid URI query parameter: \[withheld\]\)"),
    ("postgresql://db1/app?sslmode=s3cretpassw0rd%zz", "libpq cannot parse"),
    ("host=db1 password=s3cretpassw0rd", "contains a password"),
])
def test_meaningless_dsns_are_rejected_naming_the_target(dsn, message):
    # before: `dsn: ""` was accepted and backed up whatever libpq's defaults reached
    with pytest.raises(ConfigError, match=rf"targets\.app\.dsn: .*{message}") as err:
        parse_config({"targets": {"app": {"dsn": dsn}}})
    assert "s3cretpassw0rd" not in str(err.value)


@pytest.mark.parametrize("dsn", ["host=db1 s3cretpassw0rd", "postgresql://db1/app?s3cretpassw0rd=1",
                                 "postgresql://db1/app?sslmode=s3cretpassw0rd%zz", "s3cretpassw0rd://db1/app"])
def test_the_one_dsn_parser_never_quotes_the_string_back(dsn):
    # libpq quotes the word it stumbled on, which can be a password written without `password=`
    with pytest.raises(ConfigError, match=r"--to is not a valid connection string \(libpq cannot parse it: .*\[withheld\]") as err:
        parse_dsn(dsn, "--to", ConfigError)
    assert "s3cretpassw0rd" not in str(err.value)


def test_verification_server_dsn_is_checked_too():
    with pytest.raises(ConfigError, match=r"defaults\.verification\.server_dsn: the DSN is empty"):
        parse_config({"defaults": {"verification": {"server_dsn": ""}}})


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        parse_text("- just\n- a list\n", tmp_path)


def test_a_config_that_is_not_utf8_is_an_error_not_a_guess(tmp_path):
    from dbops_pipelines.config import load_config

    path = tmp_path / "dbops.yaml"
    path.write_bytes(b"targets:\n  app: {dsn: \"postgresql://u@h/app\xff\"}\n")
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        load_config(path)
