"""One exception family for the core, so the CLI and Dagster layers can report any failure
the same way: what went wrong, and what the operator should do about it."""


class DbopsError(Exception):
    """A failure an operator can act on. ``hint`` says what to do next."""

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(f"{message}\n  -> {hint}" if hint else message)


class ConfigError(DbopsError):
    """dbops.yaml or the environment is wrong; nothing was attempted."""


class EncryptionKeyError(DbopsError):
    """The encryption key is missing, malformed, or not the one a backup was written with."""


class DatabaseUnreachable(DbopsError):
    """The target database could not be reached after retries."""


class BackupFailed(DbopsError):
    """A backup did not complete; nothing was recorded as a valid backup."""


class StorageError(DbopsError):
    """The backup store failed (after retries) or holds something unexpected."""


class ObjectExists(StorageError):
    """A create-only write found an object already under its key; nothing was written."""


class IntegrityError(DbopsError):
    """A stored backup failed authentication or checksum: corrupted, truncated or wrong key."""


class RestoreFailed(DbopsError):
    """pg_restore failed or was stopped; see the message for what was (not) written."""


class VerificationNotRun(DbopsError):
    """A restore verification could not be carried out (key, server, permissions, client
    programs); nothing was learnt about the backup and nothing was recorded against it."""


class StatsFailed(DbopsError):
    """A stats snapshot could not be taken or kept."""


class MetricsStoreError(StorageError):
    """The metrics database (history of stats snapshots) cannot be reached or written."""


class SubjectNotFound(DbopsError):
    """No row of the GDPR subject table has the given primary key (the message never quotes it)."""


class InvalidSubjectId(DbopsError):
    """A GDPR subject id that is not a value of the subject table's primary key (its type, its shape)."""


class ExportFailed(DbopsError):
    """A GDPR subject export could not be read or written; no export file was left behind."""
