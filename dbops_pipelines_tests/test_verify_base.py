"""Verification of a base backup end to end, on a real archiving PostgreSQL 15 (walserver.py):
`dbops basebackup verify-restore` restores the base backup into a scratch directory, recovers it
to its consistent point, runs pg_verifybackup and pg_amcheck, counts rows, and runs the PITR drill
(two markers, recovery to the moment between them); a tampered stored object fails with an
integrity finding. Both leave a sealed report in the store and nothing in the scratch directory."""

from __future__ import annotations

import json
import tempfile

import pytest

from dbops_pipelines.cli import main
from dbops_pipelines.wal.base_report import latest_base_reports
from dbops_pipelines.wal.basebackup import data_key, take_base_backup
from dbops_pipelines.wal.verify_base import verify_base_backup
from dbops_pipelines_tests.walserver import archiving_world, for_server


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    # The write role for the drill's markers: the test cluster's superuser (production: a role of its own).
    with archiving_world(tmp_path_factory.mktemp("vb"), target={"roles": {"cleanup": "postgres"}}) as w:
        w.sql("CREATE TABLE events (id int PRIMARY KEY, tag text)")
        w.sql("INSERT INTO events SELECT g, 'a' FROM generate_series(1, 1000) g")
        w.switch_and_wait()
        w.backup = take_base_backup(w.ctx(), "app")
        w.sql("INSERT INTO events SELECT g, 'b' FROM generate_series(1001, 1100) g")   # after the backup
        w.scratch = for_server(w.base / "scratch")
        w.scratch.chmod(0o755)
        yield w


@pytest.fixture
def scratch_parent(world, monkeypatch):
    """Scratch directories are made here (tempfile's directory), so the test sees what is left."""
    monkeypatch.setattr(tempfile, "tempdir", str(world.scratch))
    yield world.scratch
    assert not list(world.scratch.iterdir()), "the scratch directory was not removed"


def test_a_good_base_backup_verifies_with_a_pitr_drill(world, capsys, scratch_parent):
    code = main(["basebackup", "verify-restore", "app", "--json", "--timeout", "120"])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)
    assert report["outcome"] == "passed" and report["findings"] == [], report["findings"]
    assert report["backup_id"] == world.backup.backup_id
    assert report["verifybackup"]["ok"] and report["amcheck"]["ok"], (report["verifybackup"], report["amcheck"])
    # The copy is the database at the backup's end: the rows written after it are not there.
    assert report["row_counts"]["app"]["public.events"] == 1000
    assert report["consistent_at"]["lsn"] and report["rto_seconds"] > 0
    assert "not compared with the live database" in report["live_comparison"]
    drill = report["drill"]
    assert drill["status"] == "passed", drill
    assert drill["markers_present"] == [1] and drill["rows_after_target"] == 0
    # The second marker really was written to production after the target moment.
    assert world.sql("SELECT marker FROM dbops_audit.pitr_drill WHERE drill_id = %s ORDER BY 1", (drill["drill_id"],)) == [(1,), (2,)]
    ctx = world.ctx()
    saved = latest_base_reports(ctx.store, ctx.read_keys, ctx.config.server_of("app"))[world.backup.backup_id]
    assert saved.passed and saved.nonce == report["nonce"]
    assert "verified" in err and "report:" in err


def test_a_tampered_stored_object_fails_with_an_integrity_finding(world, scratch_parent):
    ctx = world.ctx()
    key = data_key(ctx.config.server_of("app"), world.backup.backup_id)
    saved = ctx.store.get_bytes(key)
    bad = bytearray(saved)
    bad[len(bad) // 2] ^= 0x01                       # one bit, same size: the listing still calls it valid
    ctx.store.delete(key)
    ctx.store.put_bytes(key, bytes(bad))
    try:
        report = verify_base_backup(ctx, "app", world.backup.backup_id, drill=True, timeout=120)
    finally:
        ctx.store.delete(key)
        ctx.store.put_bytes(key, saved)
    assert not report.passed and report.outcome == "failed"
    kinds = {(f.kind, f.severity) for f in report.findings}
    assert kinds == {("integrity", "error")}, report.findings
    assert world.backup.backup_id in report.findings[0].message
    assert report.amcheck is None and report.drill["status"] == "skipped"   # nothing runs on a damaged copy
    newest = latest_base_reports(ctx.store, ctx.read_keys, ctx.config.server_of("app"))[world.backup.backup_id]
    assert newest.nonce == report.nonce and not newest.passed


def test_corruption_copied_from_the_server_is_found_by_pg_amcheck(world, scratch_parent):
    """pg_verifybackup proves the files are the ones the server sent; a page already damaged on
    the server is sent faithfully, and only pg_amcheck on the recovered copy finds it."""
    world.cluster.create_database("broken")
    world.cluster.execute("CREATE TABLE victim AS SELECT g AS id, 'x' AS tag FROM generate_series(1, 50) g", dbname="broken")
    path = world.cluster.data_dir / world.cluster.execute("SELECT pg_relation_filepath('victim')", dbname="broken")[0][0]
    world.cluster.execute("CHECKPOINT")
    world.cluster.stop()
    page = bytearray(path.read_bytes())
    lp_off = int.from_bytes(page[24:28], "little") & 0x7FFF         # the first tuple's line pointer
    page[lp_off:lp_off + 4] = (0xFFFFFFF0).to_bytes(4, "little")     # its xmin: far in the future
    path.write_bytes(bytes(page))
    world.cluster.start()
    try:
        world.switch_and_wait()
        backup = take_base_backup(world.ctx(), "app")
        report = verify_base_backup(world.ctx(), "app", backup.backup_id, drill=False, timeout=120)
    finally:
        world.cluster.drop_database("broken")
    assert report.verifybackup["ok"] and not report.passed
    # pg_amcheck names the table and the damage; counting its rows fails on the same tuple.
    assert [f.kind for f in report.findings] == ["amcheck", "row_count"], report.findings
    assert report.amcheck["exit_code"] == 2 and "victim" in report.findings[0].message, report.amcheck
    assert "4294967280" in report.findings[0].message and "broken: public.victim" in report.findings[1].message
    assert report.row_counts["app"]["public.events"] == 1100       # the other tables are still counted
    assert report.drill["status"] == "skipped"
