"""Manifests and digests: a version's identity is the sha256 of its canonical manifest.

digest = "sha256:" + hex(sha256(canonical JSON of {"files": [{"path", "size", "sha256"}, ...]}))
with files sorted by path; canonical JSON = sorted keys, "," and ":" separators, UTF-8 (RFC 8785
for these string and integer values). Anyone can recompute it from the files alone.
"""

import hashlib
import re
import unicodedata
from pathlib import PurePosixPath

from audit.chain import canonical_json
from core.errors import InvalidInput

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
MAX_FILES = 10_000
MAX_PATH = 1024
MAX_NAME = 255  # bytes in one path segment: the file-name limit of ext4, XFS, APFS, NTFS


def _fail(message: str, field: str):
    raise InvalidInput(message, detail={field: [message]})


def _check_path(path, where: str) -> str:
    if not isinstance(path, str) or not path:
        _fail("path must be a non-empty string.", where)
    if len(path) > MAX_PATH:
        _fail(f"path is longer than {MAX_PATH} characters.", where)
    parts = path.split("/")
    if path.startswith("/") or "\\" in path or any(p in ("", ".", "..") for p in parts) or "\x00" in path:
        _fail(f"path '{path}' must be relative, use '/' separators and contain no '', '.' or '..' segments.", where)
    if any(len(p.encode()) > MAX_NAME for p in parts):
        _fail(f"path '{path[:80]}…' has a name longer than {MAX_NAME} bytes, which no common file system holds.", where)
    return str(PurePosixPath(path))


def normalize(manifest) -> dict:
    """Validate a manifest and return it with files sorted by path. Raises InvalidInput naming the field."""
    if not isinstance(manifest, dict) or set(manifest) != {"files"}:
        _fail('manifest must be an object with exactly one key, "files".', "manifest")
    files = manifest["files"]
    if not isinstance(files, list) or not files:
        _fail("manifest.files must be a non-empty list.", "manifest.files")
    if len(files) > MAX_FILES:
        _fail(f"manifest.files has {len(files)} entries; at most {MAX_FILES} are allowed.", "manifest.files")
    seen, result, spelled = set(), [], {}
    for i, entry in enumerate(files):
        where = f"manifest.files[{i}]"
        if not isinstance(entry, dict) or set(entry) != {"path", "size", "sha256"}:
            _fail('each file must be an object with exactly "path", "size" and "sha256".', where)
        path = _check_path(entry["path"], f"{where}.path")
        size, sha = entry["size"], entry["sha256"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            _fail("size must be a non-negative integer (bytes).", f"{where}.size")
        if not isinstance(sha, str) or not SHA256_HEX.match(sha):
            _fail("sha256 must be 64 lowercase hexadecimal characters.", f"{where}.sha256")
        if path in seen:
            _fail(f"path '{path}' appears more than once.", f"{where}.path")
        # 'café' written precomposed and decomposed: two paths here, one file where names are normalized (macOS
        # file systems, many archive tools) or shown (a reviewer sees two identical names).
        other = spelled.setdefault(unicodedata.normalize("NFC", path), path)
        if other != path:
            _fail(
                f"paths {other!r} and {path!r} differ only in how their Unicode characters are composed (they are "
                "the same name in NFC); use one spelling.",
                f"{where}.path",
            )
        seen.add(path)
        result.append({"path": path, "size": size, "sha256": sha})
    folders = {str(parent) for path in seen for parent in PurePosixPath(path).parents} - {"."}
    if clash := sorted(seen & folders):
        _fail(
            f"path '{clash[0]}' is a file and also the folder of other files; a file system holds only one.",
            "manifest.files",
        )
    result.sort(key=lambda f: f["path"])
    return {"files": result}


def digest(manifest: dict) -> str:
    """The digest of an already normalized manifest."""
    return "sha256:" + hashlib.sha256(canonical_json({"files": manifest["files"]})).hexdigest()
