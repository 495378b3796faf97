"""Fixtures of the registry's tests."""

import pytest

from tests import processes


@pytest.fixture
def dead_url() -> str:
    """A URL nobody answers: any request the CLI made would fail with exit status 3."""
    return f"http://127.0.0.1:{processes.free_port()}"
