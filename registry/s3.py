"""Content-addressed artifact storage on S3 (or any S3-compatible server), with presigned uploads.

Same interface and promises as registry.storage.LocalBlobStore: blobs live at
blobs/sha256/<first two hex>/<hex>, and nothing reaches a blob key before its bytes have been hashed
and found to match the declared sha256 (and size).

- put(): the incoming chunks are hashed while they stream to a temporary key tmp/<uuid> (a multipart
  upload through boto3's managed transfer, so memory stays bounded), then copied to the blob key;
  the temporary key is deleted whatever happens.
- presigned uploads, for files too large to send through the API: presign_put() hands out a URL for
  a single PUT to a staging key staging/<sha256>.<size>.<uuid>; complete() streams the staged object
  back, hashes it, copies it to the blob key only if it is unchanged since it was hashed (ETag
  precondition), and deletes the staging object. No database state: the upload id is the staging
  key's last segment, which carries the declared sha256 and size.

Keys under tmp/ and staging/ are scratch space: `manage.py prune_artifacts` deletes old ones, and a
bucket lifecycle rule that expires them after a day or two does too (abandoned multipart uploads, which
no listing of objects shows, only the rule can clean up).
"""

import copy
import hashlib
import logging
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from core.errors import Conflict, InvalidInput, NotFound
from registry.storage import CHUNK, MAX_SINGLE_PUT, SHA256_HEX, ListedBlob, StoredBlob, blob_key, check_received

log = logging.getLogger(__name__)

TMP_PREFIX = "tmp/"
BLOB_PREFIX = "blobs/sha256/"
STAGING_PREFIX = "staging/"
PRESIGN_EXPIRES_SECONDS = 3600
PART_SIZE = 8 * 1024 * 1024
MAX_PARTS = 10_000  # S3's limit for one multipart upload
MAX_OBJECT = 5 * 1024**4  # S3's limit for one object
UPLOAD_ID = re.compile(r"^([0-9a-f]{64})\.([0-9]{1,20})\.([0-9a-f]{32})$")
NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}
PRECONDITION_CODES = {"412", "PreconditionFailed"}


def nothing_uploaded(upload_id: str) -> NotFound:
    """The one answer to completing an upload nothing was PUT for, whether or not some model holds those bytes: a
    second wording for the bytes a hidden model holds told a registrant that it holds them."""
    return NotFound(
        f"Nothing was uploaded for upload {upload_id}: PUT the file to the presigned URL first "
        "(it expires; ask POST …/uploads for a new one).",
        code="upload_not_found",
    )


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class _HashingReader:
    """A read()-only file object over an iterable of byte chunks that hashes and counts what it hands out.

    boto3 treats it as a non-seekable stream: it reads it once, in order, one part at a time.
    """

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = iter(chunks)
        self._buffer = bytearray()
        self._done = False
        self.hasher = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        while not self._done and (n is None or n < 0 or len(self._buffer) < n):
            chunk = next(self._chunks, None)
            if chunk is None:
                self._done = True
                break
            self.hasher.update(chunk)
            self.size += len(chunk)
            self._buffer += chunk
        if n is None or n < 0 or n >= len(self._buffer):
            data, self._buffer = bytes(self._buffer), bytearray()
        else:
            data = bytes(self._buffer[:n])
            del self._buffer[:n]
        return data


def part_size(size: int | None) -> int:
    """PART_SIZE, or the smallest whole MiB that fits `size` bytes into MAX_PARTS parts."""
    if not size:
        return PART_SIZE
    mib = 1024 * 1024
    return max(PART_SIZE, -(-size // (MAX_PARTS * mib)) * mib)


@dataclass(frozen=True)
class PresignedUpload:
    upload_id: str
    url: str
    method: str
    headers: dict
    expires_at: datetime
    already_stored: bool


class S3BlobStore:
    def __init__(self, *, client, bucket: str, presign_expires: int = PRESIGN_EXPIRES_SECONDS):
        self.client = client
        self.bucket = bucket
        self.presign_expires = presign_expires
        # Parts of PART_SIZE; at most 4 of them held in memory per transfer (boto3's default is 10).
        self.transfer = TransferConfig(
            multipart_threshold=PART_SIZE,
            multipart_chunksize=PART_SIZE,
            max_concurrency=4,
            preferred_transfer_client="classic",
        )
        self.transfer.max_in_memory_upload_chunks = 4

    @classmethod
    def from_settings(cls) -> "S3BlobStore":
        """Bucket, endpoint and region from settings; credentials from boto3's usual sources (AWS_* env vars,
        shared config, instance role)."""
        if not settings.S3_BUCKET:
            raise ImproperlyConfigured("ARTIFACT_STORAGE=s3 needs S3_BUCKET (and S3_ENDPOINT_URL for non-AWS servers).")
        endpoint = settings.S3_ENDPOINT_URL or None
        # On AWS itself, virtual-hosted addressing makes presigned URLs name the regional endpoint
        # (bucket.s3.<region>.amazonaws.com) rather than the global one, which redirects for buckets outside
        # us-east-1. S3-compatible servers (MinIO, moto) keep boto3's choice for them: path style.
        addressing = None if endpoint else {"addressing_style": "virtual"}
        # Bounded waits (S3_CONNECT_TIMEOUT, S3_READ_TIMEOUT; config/settings.py says why): botocore's defaults held
        # a call on an endpoint that accepts and never answers for minutes, and a web thread with it.
        config = Config(
            signature_version="s3v4",
            s3=addressing,
            connect_timeout=settings.S3_CONNECT_TIMEOUT,
            read_timeout=settings.S3_READ_TIMEOUT,
            retries={"total_max_attempts": 3, "mode": "standard"},  # 3 in all (`max_attempts` counts retries only)
        )
        client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint, region_name=settings.S3_REGION or None, config=config
        )
        return cls(
            client=client,
            bucket=settings.S3_BUCKET,
            presign_expires=getattr(settings, "S3_PRESIGN_EXPIRES", PRESIGN_EXPIRES_SECONDS),
        )

    # --- the blob store interface (as LocalBlobStore) --------------------------------------------

    def size(self, sha256: str) -> int | None:
        return self._head_size(blob_key(sha256))

    def put(self, chunks: Iterable[bytes], *, expected_sha256: str, expected_size: int | None = None) -> StoredBlob:
        if expected_size is not None and expected_size > MAX_OBJECT:
            raise InvalidInput(
                f"S3 stores objects of at most {MAX_OBJECT} bytes; this file is {expected_size} bytes. "
                "Split the artifact into smaller files.",
                code="too_large",
                detail={"size": [f"At most {MAX_OBJECT} bytes."]},
            )
        reader = _HashingReader(chunks)
        if self.size(expected_sha256) is not None:
            # Already stored: the bytes still have to match what was declared, but need not be kept.
            while reader.read(CHUNK):
                pass
            check_received(reader.hasher.hexdigest(), reader.size, expected_sha256, expected_size)
            return StoredBlob(expected_sha256, reader.size, created=False)
        tmp = f"{TMP_PREFIX}{uuid.uuid4().hex}"
        try:
            self.client.upload_fileobj(reader, self.bucket, tmp, Config=self._transfer_for(expected_size))
            check_received(reader.hasher.hexdigest(), reader.size, expected_sha256, expected_size)
            created = self._promote(tmp, expected_sha256)
            return StoredBlob(expected_sha256, reader.size, created=created)
        finally:
            self._discard(tmp)

    def open(self, sha256: str):
        """A readable, closeable stream of the blob (botocore StreamingBody). FileNotFoundError if absent."""
        try:
            return self.client.get_object(Bucket=self.bucket, Key=blob_key(sha256))["Body"]
        except ClientError as exc:
            if _error_code(exc) in NOT_FOUND_CODES:
                raise FileNotFoundError(blob_key(sha256)) from None
            raise

    def listing(self) -> Iterator[ListedBlob]:
        """Every stored blob."""
        for obj in self._objects(BLOB_PREFIX):
            sha256 = obj["Key"].rsplit("/", 1)[-1]
            if SHA256_HEX.match(sha256):
                yield ListedBlob(sha256, obj["Size"], obj["LastModified"])

    def delete(self, sha256: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=blob_key(sha256))

    def delete_scratch(self, *, before: datetime) -> int:
        """Delete scratch objects (tmp/, staging/) last written before `before`: uploads abandoned half-way, presigned
        uploads never completed. The number deleted."""
        deleted = 0
        for prefix in (TMP_PREFIX, STAGING_PREFIX):
            old = [{"Key": obj["Key"]} for obj in self._objects(prefix) if obj["LastModified"] < before]
            for start in range(0, len(old), 1000):  # DeleteObjects takes at most 1,000 keys
                answer = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": old[start : start + 1000]})
                deleted += len(answer.get("Deleted", []))
        return deleted

    # --- presigned uploads ------------------------------------------------------------------------

    def presign_put(self, *, sha256: str, size: int) -> PresignedUpload:
        """A URL the client PUTs the file's bytes to (one request, at most 5 GiB), then calls complete()."""
        if size > MAX_SINGLE_PUT:
            raise InvalidInput(
                f"A presigned upload is one PUT, and S3 takes at most {MAX_SINGLE_PUT} bytes in one PUT; "
                f"this file is {size} bytes. Split the artifact into smaller files.",
                code="too_large",
                detail={"size": [f"At most {MAX_SINGLE_PUT} bytes."]},
            )
        upload_id = f"{sha256}.{size}.{uuid.uuid4().hex}"
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        # Content-Type and Content-Length are signed: S3 refuses a body of any other length.
        url = self.client.generate_presigned_url(
            "put_object",
            Params={
                "Bucket": self.bucket,
                "Key": STAGING_PREFIX + upload_id,
                "ContentType": headers["Content-Type"],
                "ContentLength": size,
            },
            ExpiresIn=self.presign_expires,
            HttpMethod="PUT",
        )
        return PresignedUpload(
            upload_id=upload_id,
            url=url,
            method="PUT",
            headers=headers,
            expires_at=datetime.now(UTC) + timedelta(seconds=self.presign_expires),
            already_stored=self.size(sha256) is not None,
        )

    def complete(self, upload_id: str) -> StoredBlob:
        """Verify a staged upload and move it to its blob key. A mismatch deletes the staged object."""
        match = UPLOAD_ID.match(upload_id)
        if match is None:
            raise NotFound(f"'{upload_id}' is not an upload id handed out by POST …/uploads.", code="upload_not_found")
        sha256, size = match[1], int(match[2])
        staged = STAGING_PREFIX + upload_id
        stored = self.size(sha256)
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=staged)
        except ClientError as exc:
            if _error_code(exc) in NOT_FOUND_CODES and stored is not None:
                return StoredBlob(sha256, stored, created=False, received=False)  # nothing sent, nothing shown
            if _error_code(exc) in NOT_FOUND_CODES:
                raise nothing_uploaded(upload_id) from None
            raise
        hasher, received = hashlib.sha256(), 0
        body = obj["Body"]
        try:
            for chunk in body.iter_chunks(CHUNK):
                hasher.update(chunk)
                received += len(chunk)
        finally:
            body.close()
        try:
            check_received(hasher.hexdigest(), received, sha256, size)
        except InvalidInput:
            self._discard(staged)
            raise
        if stored is not None:  # the registry already holds these bytes; the caller has shown it holds them too
            self._discard(staged)
            return StoredBlob(sha256, received, created=False)
        try:
            created = self._promote(staged, sha256, if_match=obj["ETag"])
        except ClientError as exc:
            code = _error_code(exc)
            if code in PRECONDITION_CODES:
                raise Conflict(
                    f"The staged object for upload {upload_id} changed while it was being verified; "
                    "nothing was stored. Call complete again once the upload has finished.",
                    code="upload_changed",
                ) from None
            if code in NOT_FOUND_CODES and self.size(sha256) is not None:
                return StoredBlob(sha256, received, created=False)  # a concurrent complete won
            raise
        self._discard(staged)
        return StoredBlob(sha256, received, created=created)

    # --- helpers ----------------------------------------------------------------------------------

    def _objects(self, prefix: str) -> Iterator[dict]:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", [])

    def _head_size(self, key: str) -> int | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"]
        except ClientError as exc:
            if _error_code(exc) in NOT_FOUND_CODES:
                return None
            raise

    def _transfer_for(self, size: int | None) -> TransferConfig:
        """The transfer settings for a stream of `size` bytes: boto3 cannot size the parts of a stream it cannot
        measure, and S3 takes at most MAX_PARTS parts (8 MiB parts stopped at 78 GiB, after the whole file)."""
        part = part_size(size)
        if part == self.transfer.multipart_chunksize:
            return self.transfer
        config = copy.copy(self.transfer)
        config.multipart_chunksize = part
        return config

    def _promote(self, key: str, sha256: str, *, if_match: str | None = None) -> bool:
        """Copy a verified object to its blob key. False when the blob was already there."""
        if self.size(sha256) is not None:
            return False
        extra = {"CopySourceIfMatch": if_match} if if_match else None
        self.client.copy(
            {"Bucket": self.bucket, "Key": key}, self.bucket, blob_key(sha256), ExtraArgs=extra, Config=self.transfer
        )
        return True

    def _discard(self, key: str) -> None:
        """Delete a scratch key (absent keys are fine). Best effort: a failure is logged, not raised, so it
        cannot hide the outcome it cleans up after; the bucket's lifecycle rule is the backstop."""
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except Exception:
            log.exception(
                "could not delete s3://%s/%s; it is scratch space and may be deleted by hand", self.bucket, key
            )
