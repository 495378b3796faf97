import hashlib


def file_entry(path: str, content: bytes) -> dict:
    return {"path": path, "size": len(content), "sha256": hashlib.sha256(content).hexdigest()}


def s3_manifest(*contents: bytes) -> dict:
    return {"files": [file_entry(f"model-{i}.bin", c) for i, c in enumerate(contents)]}


def register_body(manifest: dict, **extra) -> dict:
    return {"artifact_uri": "s3://bucket/models/x", "manifest": manifest, **extra}
