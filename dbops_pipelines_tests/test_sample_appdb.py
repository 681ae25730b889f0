"""Tests of the sample application database (dbops_pipelines.sample.appdb).

The databases are created on the session's throwaway cluster (the `pg_admin_dsn` fixture)
and dropped afterwards.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import psycopg
import pytest
import zstandard
from psycopg import sql
from psycopg.conninfo import make_conninfo

from dbops_pipelines.sample import appdb
from dbops_pipelines.sample.schema import COPY_COLUMNS

ROWS = 2000


@pytest.fixture(scope="module")
def pg_admin_dsn(pg_cluster) -> str:
    """DSN of a maintenance database on the session's throwaway cluster."""
    return pg_cluster.dsn("postgres")


@pytest.fixture(scope="module")
def make_database(pg_admin_dsn):
    """Factory: create an empty scratch database, return its DSN; all are dropped at teardown."""
    created: list[str] = []

    def make() -> str:
        name = f"dbops_sample_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created.append(name)
        return make_conninfo(pg_admin_dsn, dbname=name)

    yield make
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        for name in created:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def sample_db(make_database):
    """(dsn, counts) of a sample database built with rows=2000, seed=42."""
    dsn = make_database()
    counts = appdb.build_sample_database(dsn, ROWS, seed=42)
    return dsn, counts


def _table_md5(dsn: str, table: str) -> str:
    with psycopg.connect(dsn) as conn:
        q = sql.SQL("SELECT md5(string_agg(t::text, E'\\n' ORDER BY t.id)) FROM {} t").format(
            sql.Identifier(*table.split(".")))
        return conn.execute(q).fetchone()[0]


def test_tables_exist_with_returned_counts(sample_db):
    dsn, counts = sample_db
    assert tuple(counts) == appdb.SAMPLE_TABLES
    with psycopg.connect(dsn) as conn:
        existing = {r[0] for r in conn.execute(
            "SELECT schemaname || '.' || tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert set(appdb.SAMPLE_TABLES) <= existing
        for table in appdb.SAMPLE_TABLES:
            n = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                sql.Identifier(*table.split(".")))).fetchone()[0]
            assert n == counts[table], table
    assert counts["public.requisitions"] == ROWS
    assert counts["public.audit_events"] == 2 * ROWS
    assert 2.5 * ROWS <= counts["public.request_items"] <= 3.8 * ROWS
    assert counts["public.tenants"] == 3
    assert counts["public.users"] == ROWS // 10
    assert counts["public.vendors"] == ROWS // 20
    assert counts["public.contracts"] == ROWS // 10
    assert counts["public.roles"] == 8
    assert counts["public.user_roles"] >= counts["public.users"]


def test_row_level_security_enabled_and_forced(sample_db):
    dsn, _ = sample_db
    with psycopg.connect(dsn) as conn:
        for table in appdb.RLS_TABLES:
            schema, name = table.split(".")
            enabled, forced = conn.execute(
                "SELECT c.relrowsecurity, c.relforcerowsecurity FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
                (schema, name)).fetchone()
            assert enabled and forced, table
            policies = conn.execute(
                "SELECT policyname, roles, qual FROM pg_policies WHERE schemaname = %s AND tablename = %s",
                (schema, name)).fetchall()
            assert len(policies) == 1, table
            _, roles, qual = policies[0]
            assert roles == ["public"]
            assert "app.tenant_id" in qual and "tenant_id" in qual


def test_some_users_soft_deleted(sample_db):
    dsn, counts = sample_db
    anchor = appdb.DEFAULT_ANCHOR
    with psycopg.connect(dsn) as conn:
        n_deleted, min_at, max_at, missing_by = conn.execute(
            "SELECT count(*), min(deleted_at), max(deleted_at), count(*) FILTER (WHERE deleted_by IS NULL) "
            "FROM public.users WHERE deleted_at IS NOT NULL").fetchone()
        frac = n_deleted / counts["public.users"]
        assert 0.02 <= frac <= 0.09, frac
        assert anchor - timedelta(days=90) <= min_at <= max_at <= anchor
        assert max_at - min_at > timedelta(days=30)  # spread out, not one moment
        assert missing_by == 0
        # Deleted by a live user of the same tenant.
        bad = conn.execute(
            "SELECT count(*) FROM public.users u JOIN public.users d ON d.id = u.deleted_by "
            "WHERE d.tenant_id <> u.tenant_id OR d.deleted_at IS NOT NULL").fetchone()[0]
        assert bad == 0
        # Deleted users still own data: that is what GDPR cleanup has to deal with.
        owned = conn.execute(
            "SELECT count(*) FROM public.requisitions r JOIN public.users u ON u.id = r.requester_id "
            "WHERE u.deleted_at IS NOT NULL").fetchone()[0]
        assert owned > 0


def test_foreign_keys_valid_and_tenant_consistent(sample_db):
    dsn, _ = sample_db
    with psycopg.connect(dsn) as conn:
        fks = conn.execute(
            "SELECT conrelid::regclass::text, conname, convalidated FROM pg_constraint "
            "WHERE contype = 'f' AND connamespace = 'public'::regnamespace").fetchall()
        assert len(fks) >= 15
        assert all(valid for _, _, valid in fks), fks
        # Re-check every foreign key by hand (catches constraints added NOT VALID elsewhere).
        for table, conname, _ in fks:
            cols, ref_table, ref_cols = conn.execute(
                "SELECT array(SELECT attname FROM unnest(c.conkey) WITH ORDINALITY k(n, o) "
                "             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY o), "
                "       c.confrelid::regclass::text, "
                "       array(SELECT attname FROM unnest(c.confkey) WITH ORDINALITY k(n, o) "
                "             JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY o) "
                "FROM pg_constraint c WHERE c.conname = %s AND c.conrelid = %s::regclass",
                (conname, table)).fetchone()
            cond = sql.SQL(" AND ").join(
                sql.SQL("r.{} = c.{}").format(sql.Identifier(rc), sql.Identifier(cc))
                for cc, rc in zip(cols, ref_cols))
            notnull = sql.SQL(" AND ").join(sql.SQL("c.{} IS NOT NULL").format(sql.Identifier(cc)) for cc in cols)
            q = sql.SQL("SELECT count(*) FROM {} c WHERE {} AND NOT EXISTS (SELECT 1 FROM {} r WHERE {})").format(
                sql.SQL(table), notnull, sql.SQL(ref_table), cond)
            assert conn.execute(q).fetchone()[0] == 0, conname
        # Rows of a requisition belong to one tenant.
        checks = {
            "requester": "SELECT count(*) FROM requisitions r JOIN users u ON u.id = r.requester_id "
                         "WHERE u.tenant_id <> r.tenant_id",
            "approver": "SELECT count(*) FROM requisitions r JOIN users u ON u.id = r.approver_id "
                        "WHERE u.tenant_id <> r.tenant_id",
            "vendor": "SELECT count(*) FROM requisitions r JOIN vendors v ON v.id = r.vendor_id "
                      "WHERE v.tenant_id <> r.tenant_id",
            "contract": "SELECT count(*) FROM requisitions r JOIN contracts c ON c.id = r.contract_id "
                        "WHERE c.tenant_id <> r.tenant_id",
            "items": "SELECT count(*) FROM request_items i JOIN requisitions r ON r.id = i.requisition_id "
                     "WHERE i.tenant_id <> r.tenant_id",
            "totals": "SELECT count(*) FROM requisitions r WHERE total_cents <> "
                      "(SELECT sum(quantity * unit_price_cents) FROM request_items i WHERE i.requisition_id = r.id)",
            "actor": "SELECT count(*) FROM audit_events e JOIN users u ON u.id = e.actor_id "
                     "WHERE u.tenant_id <> e.tenant_id",
        }
        for what, q in checks.items():
            assert conn.execute(q).fetchone()[0] == 0, what


def test_identity_sequences_follow_loaded_ids(sample_db):
    dsn, counts = sample_db
    with psycopg.connect(dsn) as conn:
        new_id = conn.execute(
            "INSERT INTO public.tenants (name, slug, domain, country_code, plan) "
            "VALUES ('Test Tenant', 'test-tenant-x', 'test-tenant-x.example', 'US', 'free') RETURNING id"
        ).fetchone()[0]
        assert new_id == counts["public.tenants"] + 1
        conn.rollback()


def test_same_seed_same_data(sample_db, make_database):
    dsn, counts = sample_db
    other = make_database()
    counts2 = appdb.build_sample_database(other, ROWS, seed=42)
    assert counts2 == counts
    for table in ("public.requisitions", "public.users", "public.audit_events"):
        assert _table_md5(dsn, table) == _table_md5(other, table), table


def test_other_seed_other_data(sample_db, make_database):
    dsn, _ = sample_db
    other = make_database()
    appdb.build_sample_database(other, ROWS, seed=7)
    assert _table_md5(dsn, "public.requisitions") != _table_md5(other, "public.requisitions")


def test_seed_into_full_schema(make_database):
    """create_schema + seed (the slower path with keys in place) also works."""
    dsn = make_database()
    with psycopg.connect(dsn) as conn:
        appdb.create_schema(conn)
        seen: list[tuple[str, int]] = []
        counts = appdb.seed(conn, 300, seed=1, progress=lambda t, n: seen.append((t, n)))
        conn.commit()
        assert counts["public.requisitions"] == 300
        assert {t for t, _ in seen} == set(appdb.SAMPLE_TABLES)
        assert conn.execute("SELECT count(*) FROM public.request_items").fetchone()[0] == \
            counts["public.request_items"]


def test_generated_text_is_deterministic_and_compresses_about_3x():
    blocks = list(appdb.generate(3000, seed=5))
    again = list(appdb.generate(3000, seed=5))
    assert blocks == again
    raw = "".join(b for _, b, _ in blocks).encode()
    for table, block, n in blocks:
        lines = block.split("\n")
        assert lines[-1] == "" and len(lines) - 1 == n
        ncols = len(COPY_COLUMNS[table])
        assert all(line.count("\t") == ncols - 1 for line in lines[:-1]), table
    ratio = len(raw) / len(zstandard.ZstdCompressor(level=1).compress(raw))
    assert 2.5 <= ratio <= 4.0, ratio
