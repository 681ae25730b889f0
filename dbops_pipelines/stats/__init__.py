"""Stats snapshots: what each database was doing, as history, findings, Prometheus metrics and reports."""
