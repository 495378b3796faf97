"""Content-addressed artifact storage: each file is stored once, under its sha256.

The registry's own artifacts live at blobs/sha256/<first two hex>/<hex>. Uploads are hashed while
they are written to a temporary place and only moved into the blob namespace when the hash (and
size, where declared) match, so a tampered upload leaves nothing behind.
"""

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

from django.conf import settings

from core.errors import InvalidInput, PayloadTooLarge

CHUNK = 1024 * 1024
MAX_SINGLE_PUT = 5 * 1024**3  # S3's limit for one PUT, hence for one presigned upload


@dataclass(frozen=True)
class StoredBlob:
    sha256: str
    size: int
    created: bool  # False when the blob was already stored
    received: bool = True  # False when no bytes came with the request (a presigned upload of stored bytes)


@dataclass(frozen=True)
class ListedBlob:
    sha256: str
    size: int
    modified: datetime  # when its bytes were stored (aware, UTC)


SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def blob_key(sha256: str) -> str:
    return f"blobs/sha256/{sha256[:2]}/{sha256}"


def check_received(sha256: str, size: int, expected_sha256: str, expected_size: int | None) -> None:
    if sha256 != expected_sha256:
        raise InvalidInput(
            f"Uploaded content has sha256 {sha256}, not the declared {expected_sha256}; nothing was stored.",
            code="digest_mismatch",
            detail={"declared": expected_sha256, "received": sha256},
        )
    if expected_size is not None and size != expected_size:
        raise InvalidInput(
            f"Uploaded content is {size} bytes, not the declared {expected_size}; nothing was stored.",
            code="size_mismatch",
            detail={"declared": expected_size, "received": size},
        )


def bounded_upload(chunks: Iterable[bytes], *, expected_size: int | None) -> Iterator[bytes]:
    """`chunks` as a store reads them, refused before a byte is read when `expected_size` is over the limit
    (MAX_ARTIFACT_BYTES), and at the first byte past `expected_size` or past the limit otherwise: a body longer
    than it may be is not read on, and the store keeps nothing of it (its scratch copy goes, as for any upload
    that fails)."""
    limit = settings.MAX_ARTIFACT_BYTES
    if expected_size is not None and expected_size > limit:
        raise PayloadTooLarge(artifact_too_large(f"{expected_size} bytes"), detail={"limit_bytes": limit})
    return _bounded(iter(chunks), expected_size, limit)


def _bounded(chunks: Iterator[bytes], expected_size: int | None, limit: int) -> Iterator[bytes]:
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if expected_size is not None and size > expected_size:
            raise InvalidInput(
                f"Uploaded content is longer than the declared {expected_size} bytes; nothing was stored.",
                code="size_mismatch",
                detail={"declared": expected_size, "received_at_least": size},
            )
        if size > limit:
            raise PayloadTooLarge(artifact_too_large(f"more than {limit} bytes"), detail={"limit_bytes": limit})
        yield chunk


def artifact_too_large(size: str) -> str:
    limit = settings.MAX_ARTIFACT_BYTES
    return (
        f"This file is {size}; one artifact may be at most {limit} bytes (MAX_ARTIFACT_BYTES), and nothing was "
        "stored. Split it into smaller files, or have the registry's operator raise MAX_ARTIFACT_BYTES."
    )


class LocalBlobStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, sha256: str) -> Path:
        return self.root / blob_key(sha256)

    def size(self, sha256: str) -> int | None:
        try:
            return self._path(sha256).stat().st_size
        except FileNotFoundError:
            return None

    def put(self, chunks: Iterable[bytes], *, expected_sha256: str, expected_size: int | None = None) -> StoredBlob:
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        hasher, size = hashlib.sha256(), 0
        fd, tmp_name = tempfile.mkstemp(dir=tmp_dir)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    hasher.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            check_received(hasher.hexdigest(), size, expected_sha256, expected_size)
            final = self._path(expected_sha256)
            if final.exists():
                return StoredBlob(expected_sha256, size, created=False)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp_name, final)
            return StoredBlob(expected_sha256, size, created=True)
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)

    def open(self, sha256: str):
        return self._path(sha256).open("rb")

    def listing(self) -> Iterator[ListedBlob]:
        """Every stored blob. (A file listed may be gone a moment later: a pruning, an upload's end.)"""
        for path in (self.root / "blobs" / "sha256").glob("*/*"):
            if SHA256_HEX.match(path.name):
                with contextlib.suppress(FileNotFoundError):
                    stat = path.stat()
                    yield ListedBlob(path.name, stat.st_size, datetime.fromtimestamp(stat.st_mtime, UTC))

    def delete(self, sha256: str) -> None:
        self._path(sha256).unlink(missing_ok=True)

    def delete_scratch(self, *, before: datetime) -> int:
        """Delete what uploads left in scratch space (tmp/) untouched since `before`: an upload's scratch copy goes
        when it ends, but not when its process is killed. The number deleted."""
        deleted = 0
        for path in (self.root / "tmp").glob("*"):
            with contextlib.suppress(FileNotFoundError):
                if datetime.fromtimestamp(path.stat().st_mtime, UTC) < before:
                    path.unlink()
                    deleted += 1
        return deleted


@cache
def blob_store():
    """The configured store: local files by default, S3 when ARTIFACT_STORAGE=s3."""
    if settings.ARTIFACT_STORAGE == "s3":
        from registry.s3 import S3BlobStore

        return S3BlobStore.from_settings()
    return LocalBlobStore(settings.ARTIFACT_ROOT)
