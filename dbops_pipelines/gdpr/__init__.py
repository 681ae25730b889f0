"""GDPR cleanup: soft-deleted people removed for real after a grace period (docs/gdpr.md)."""
