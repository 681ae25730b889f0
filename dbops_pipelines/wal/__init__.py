"""Point-in-time recovery: WAL archiving, base backups, archive verification and PITR (docs/pitr.md)."""
