"""dbops_pipelines: PostgreSQL operations (backups, restore verification, stats, GDPR cleanup) on Dagster.

The core packages (backup, storage, restore, ...) are plain Python; only `defs/` and
`definitions.py` import dagster.
"""
