"""A backup store on S3 or any S3-compatible service (SeaweedFS, MinIO, Ceph...), via boto3."""

from __future__ import annotations

import queue
import tempfile
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from dbops_pipelines.errors import ObjectExists, StorageError
from dbops_pipelines.storage.base import BackupStore, ObjectInfo

MIB = 1 << 20
MIN_PART = 8 * MIB          # S3 needs >= 5 MiB for every part but the last
PART_LIMIT = 1000           # some S3-compatible stores cap uploads at 1,000 parts (S3 allows 10,000)
SPOOL_IN_MEMORY = 16 * MIB  # larger parts spill to a temporary file: memory stays bounded


def part_size_for(part_number: int, size_hint: int | None) -> int:
    """Size of part ``part_number`` (0-based) of an upload of unknown final size.

    Starts from the hint spread over 80% of the part limit and doubles every 200 parts, so an
    object several times larger than its hint still fits in 1,000 parts (8 MiB parts with no
    hint reach ~50 GB; a hint of 100 GB gives 125 MiB parts reaching ~1.2 TB).
    """
    base = max(MIN_PART, -(-(size_hint or 0) // (PART_LIMIT * 8 // 10)))
    base = -(-base // MIB) * MIB
    return base * 2 ** (part_number // 200)


def _explain(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', '?')}: {err.get('Message', '')}".strip()
    return f"{type(exc).__name__}: {exc}"


class S3Store(BackupStore):
    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None,
                 region: str = "us-east-1", max_attempts: int = 5, client=None):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        # A session of its own: boto3's default session caches the credentials it found first.
        # The standard retry mode retries throttling, 5xx and connection errors with backoff.
        self.client = client or boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=region,
            config=Config(retries={"max_attempts": max_attempts, "mode": "standard"},
                          s3={"addressing_style": "path"}, connect_timeout=5, read_timeout=60),
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _fail(self, what: str, exc: Exception) -> StorageError:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return StorageError(
            f"S3 {what} failed{where}: {_explain(exc)}",
            "check that the store is reachable, the bucket exists and the credentials (AWS_ACCESS_KEY_ID/...) are right",
        )

    def _exists_error(self, key: str) -> ObjectExists:
        return ObjectExists(f"{self.location(key)} already exists; nothing was written",
                            "this is never overwritten: investigate who wrote it")

    def _precondition(self, exc: ClientError) -> bool:
        return exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict")

    def _put(self, key: str, chunks: Iterator[bytes], size_hint: int | None, overwrite: bool) -> None:
        full = self._key(key)
        # Create-only through S3's conditional write (If-None-Match: *), atomic on the server.
        cond = {} if overwrite else {"IfNoneMatch": "*"}
        first, rest = self._first_part(chunks, part_size_for(0, size_hint))
        if rest is None:
            # Small objects (manifests, reports, leases) in one request.
            try:
                self.client.put_object(Bucket=self.bucket, Key=full, Body=first.getvalue(), **cond)
            except ClientError as exc:
                if not overwrite and self._precondition(exc):
                    raise self._exists_error(key) from None
                raise self._fail(f"upload of {self.location(key)}", exc) from None
            except BotoCoreError as exc:
                raise self._fail(f"upload of {self.location(key)}", exc) from None
            return
        try:
            upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=full)["UploadId"]
        except (ClientError, BotoCoreError) as exc:
            first.close()
            raise self._fail(f"starting upload of {self.location(key)}", exc) from None
        try:
            parts = self._upload_parts(full, upload_id, first, rest, size_hint)
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts}, **cond
            )
        except BaseException as exc:
            # Abort so no partial object or billed orphan parts remain. If the store is down this
            # fails too; a lifecycle rule (AbortIncompleteMultipartUpload) and `sweep_leftovers` (run by retention)
            # clean up later. An incomplete multipart upload is never visible as an object.
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            except Exception:  # noqa: BLE001 - the original error is the one to report
                pass
            if isinstance(exc, ClientError) and not overwrite and self._precondition(exc):
                raise self._exists_error(key) from None
            if isinstance(exc, (ClientError, BotoCoreError)):
                raise self._fail(f"upload of {self.location(key)}", exc) from None
            raise

    @staticmethod
    def _first_part(chunks: Iterator[bytes], target: int):
        """Read up to one part: (spool, None) if the whole object fits in it, else (spool, chunks)."""
        spool = tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY)
        try:
            for chunk in chunks:
                spool.write(chunk)
                if spool.tell() >= target:
                    return spool, chunks
        except BaseException:
            spool.close()
            raise
        spool.seek(0)
        return _Bytes(spool.read()), None

    def _upload_parts(self, full: str, upload_id: str, first, chunks: Iterator[bytes], size_hint: int | None) -> list[dict]:
        """Fill one part while the previous one uploads in a worker thread."""
        pending: queue.Queue = queue.Queue(maxsize=1)
        parts: list[dict] = []
        errors: list[BaseException] = []

        def worker() -> None:
            while (item := pending.get()) is not None:
                number, spool = item
                try:
                    if not errors:
                        spool.seek(0)
                        resp = self.client.upload_part(Bucket=self.bucket, Key=full, UploadId=upload_id,
                                                       PartNumber=number, Body=spool)
                        parts.append({"PartNumber": number, "ETag": resp["ETag"]})
                except BaseException as exc:  # noqa: BLE001 - handed to the producer thread
                    errors.append(exc)
                finally:
                    spool.close()

        thread = threading.Thread(target=worker, name="s3-upload", daemon=True)
        thread.start()
        try:
            pending.put((1, first))
            number, spool, filled = 2, tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY), 0
            target = part_size_for(1, size_hint)
            for chunk in chunks:
                if errors:
                    break
                if number > PART_LIMIT:
                    # Refused before a part beyond the store's limit is sent, not after the upload.
                    spool.close()
                    raise StorageError(f"upload of {full} needs more than {PART_LIMIT} parts",
                                       "report this: the size hint was far too small")
                spool.write(chunk)
                filled += len(chunk)
                if filled >= target:
                    pending.put((number, spool))
                    number, spool, filled = number + 1, tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY), 0
                    target = part_size_for(number - 1, size_hint)
            if not errors and filled:
                pending.put((number, spool))
            else:
                spool.close()
        finally:
            pending.put(None)
            thread.join()
        if errors:
            raise errors[0]
        return sorted(parts, key=lambda p: p["PartNumber"])

    def get(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise StorageError(f"{self.location(key)} does not exist", "run `dbops backups list` to see what is stored") from None
            raise self._fail(f"reading {self.location(key)}", exc) from None
        except BotoCoreError as exc:
            raise self._fail(f"reading {self.location(key)}", exc) from None
        try:
            yield from body.iter_chunks(chunk_size)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(f"reading {self.location(key)}", exc) from None
        finally:
            body.close()

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        out = []
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                for obj in page.get("Contents", []):
                    out.append(ObjectInfo(obj["Key"][strip:], obj["Size"], obj["LastModified"]))
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(f"listing {self.location(prefix)}", exc) from None
        return sorted(out, key=lambda o: o.key)

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(f"deleting {self.location(key)}", exc) from None

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return ObjectInfo(key, head["ContentLength"], head["LastModified"])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._fail(f"checking {self.location(key)}", exc) from None
        except BotoCoreError as exc:
            raise self._fail(f"checking {self.location(key)}", exc) from None

    def sweep_leftovers(self, prefix: str, older_than: timedelta) -> list[str]:
        """Abort multipart uploads under ``prefix`` left by writers that died before they could
        abort; uploads anywhere else in the bucket are someone else's and never touched."""
        if not prefix:
            raise StorageError("refusing to sweep uploads without a namespace prefix", "report this: a caller passed no prefix")
        cutoff = datetime.now(timezone.utc) - older_than
        aborted = []
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=self._key(prefix))
            for up in (u for page in pages for u in page.get("Uploads", [])):
                if up["Key"].startswith(self._key(prefix)) and up["Initiated"] < cutoff:
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"])
                    aborted.append(up["Key"])
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("cleaning up stale uploads", exc) from None
        return aborted


class _Bytes:
    """A finished small object held in memory, with the file methods the upload paths use."""

    def __init__(self, data: bytes):
        self._data = data

    def getvalue(self) -> bytes:
        return self._data

    def close(self) -> None:
        self._data = b""
