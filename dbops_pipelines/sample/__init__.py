"""Sample application database for demos, tests and benchmarks.

`dbops_pipelines.sample.appdb` builds a deterministic multi-tenant procurement database
(tenants, users with soft-delete columns, roles, vendors, contracts, requisitions and
request items under forced row-level security, jsonb audit events) of a chosen size,
loaded with COPY. Plain Python: no dagster imports.
"""
