"""The backup engine: pg_dump streamed through zstd and AES-256-GCM into a BackupStore."""
