"""Two manifest paths that differ only in Unicode composition ('café' precomposed and decomposed) are one name
where names are normalized (macOS file systems, many archive tools) and look identical to a reviewer: refused."""

import pytest

from core.errors import InvalidInput
from registry import manifest

SHA = "0" * 64


def entry(path: str) -> dict:
    return {"path": path, "size": 1, "sha256": SHA}


def test_paths_equal_once_composed_are_refused_naming_both():
    composed, decomposed = "caf\u00e9.bin", "cafe\u0301.bin"
    with pytest.raises(InvalidInput) as refused:
        manifest.normalize({"files": [entry(composed), entry(decomposed)]})
    assert "same name in NFC" in refused.value.message
    assert refused.value.detail == {"manifest.files[1].path": [refused.value.message]}


def test_one_spelling_of_either_form_is_kept_as_sent():
    """Either form alone is a valid path, kept as sent: the digest is over the bytes of the path the client named."""
    for path in ("caf\u00e9.bin", "cafe\u0301.bin"):
        assert manifest.normalize({"files": [entry(path)]})["files"][0]["path"] == path
