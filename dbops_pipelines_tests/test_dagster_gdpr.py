"""GDPR cleanup in Dagster: a dry run from the launchpad shows the plan and changes nothing; the
scheduled job cleans, records rows per table, and its check passes; a failing check alerts."""

from __future__ import annotations

import dagster as dg

from dbops_pipelines.defs import names
from dbops_pipelines.definitions import build_definitions

SCHEMA = """
CREATE TABLE people (id int PRIMARY KEY, deleted_at timestamptz);
CREATE TABLE orders (id int PRIMARY KEY, person int REFERENCES people);
INSERT INTO people SELECT g, CASE WHEN g <= 3 THEN now() - interval '45 days' END FROM generate_series(1, 10) g;
INSERT INTO orders SELECT g, g FROM generate_series(1, 10) g;
"""


def test_dry_run_then_cleanup_and_check(write_config, pg_cluster, fresh_db):
    pg_cluster.execute(SCHEMA, dbname=fresh_db)
    path = write_config({"app": {"dsn": pg_cluster.dsn(fresh_db), "roles": {"cleanup": "postgres"},
                                 "gdpr": {"subject_table": "public.people"}}})
    defs = build_definitions(path)
    dg.Definitions.validate_loadable(defs)
    job = defs.resolve_job_def("gdpr_cleanup_app")
    key = names.asset_key("app", names.GDPR_CLEANUP)
    check = dg.AssetCheckKey(key, names.NO_OVERDUE_ROWS)
    with dg.instance_for_test() as instance:
        dry = job.execute_in_process(instance=instance, run_config={
            "ops": {"app__gdpr_cleanup": {"config": {"dry_run": True}}}})
        assert dry.success
        assert instance.get_latest_materialization_event(key) is None          # a dry run cleans nothing
        [observed] = [e for e in dry.all_events if e.event_type == dg.DagsterEventType.ASSET_OBSERVATION]
        meta = observed.event_specific_data.asset_observation.metadata
        assert meta["dry_run"].value is True and meta["would_delete"].value == 6
        assert pg_cluster.execute("SELECT count(*) FROM people", dbname=fresh_db)[0][0] == 10   # nothing changed
        [evaluation] = dry.get_asset_check_evaluations()
        assert evaluation.asset_check_key == check and evaluation.passed is False     # 3 overdue people

        done = job.execute_in_process(instance=instance)
        assert done.success
        meta = instance.get_latest_materialization_event(key).asset_materialization.metadata
        assert meta["rows_deleted"].value == 6 and meta["dry_run"].value is False
        [evaluation] = done.get_asset_check_evaluations()
        assert evaluation.passed is True
    assert pg_cluster.execute("SELECT count(*) FROM people", dbname=fresh_db)[0][0] == 7


def test_without_a_cleanup_role_the_run_fails_and_says_why(write_config, pg_cluster, fresh_db):
    pg_cluster.execute(SCHEMA, dbname=fresh_db)
    path = write_config({"app": {"dsn": pg_cluster.dsn(fresh_db), "gdpr": {"subject_table": "public.people"}}})
    with dg.instance_for_test() as instance:
        result = build_definitions(path).resolve_job_def("gdpr_cleanup_app").execute_in_process(
            instance=instance, raise_on_error=False)
    assert not result.success
    failure = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE][0]
    assert "has no role for cleanup" in failure.step_failure_data.user_failure_data.description
    assert pg_cluster.execute("SELECT count(*) FROM people", dbname=fresh_db)[0][0] == 10


def test_the_check_counts_rows_left_in_tables_cleanup_skips(write_config, pg_cluster, fresh_db):
    pg_cluster.execute("""
        CREATE TABLE people (id int PRIMARY KEY, deleted_at timestamptz);
        CREATE TABLE events (deleted_at timestamp);                      -- no key: cleanup cannot batch it
        INSERT INTO events VALUES (now() - interval '400 days');""", dbname=fresh_db)
    path = write_config({"app": {"dsn": pg_cluster.dsn(fresh_db), "roles": {"cleanup": "postgres"},
                                 "gdpr": {"subject_table": "public.people"}}})
    with dg.instance_for_test() as instance:
        result = build_definitions(path).resolve_job_def("gdpr_cleanup_app").execute_in_process(instance=instance)
        [evaluation] = result.get_asset_check_evaluations()
        meta = instance.get_latest_materialization_event(names.asset_key("app", names.GDPR_CLEANUP)).asset_materialization
    assert evaluation.passed is False and evaluation.metadata["overdue_rows"].value == {"public.events": 1}
    assert "no primary key" in meta.metadata["skipped_tables"].value["public.events"]
