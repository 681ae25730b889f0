"""Throwaway local services (PostgreSQL cluster, SeaweedFS S3) for tests and local development."""
