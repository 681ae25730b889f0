"""The Dagster layer: thin wiring of the core into assets, checks, schedules and sensors."""
