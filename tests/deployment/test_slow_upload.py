"""An artifact upload slower than gunicorn's worker timeout completes: gunicorn.conf.py runs threaded workers,
whose main loop keeps reporting to the arbiter while a thread receives the file (a sync worker was killed at
`timeout`, a 500 to the client, and held a whole worker for the slow client meanwhile)."""

import hashlib
import http.client
import json
import time

import pytest

from tests import processes

pytestmark = pytest.mark.slow


def test_an_upload_outlasting_the_worker_timeout_is_stored(users, tmp_path):
    processes.require_postgresql()
    env = processes.service_env("redis://127.0.0.1:1/0", DATA_DIR=str(tmp_path / "data"))
    port = processes.free_port()
    web = processes.start_web(env, tmp_path / "web.log", port, "--timeout", "2")
    try:
        headers = {"Authorization": f"Bearer {users['owner']}", "Content-Type": "application/json"}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/api/v1/models", json.dumps({"namespace": "acme", "name": "slow"}), headers)
        created = conn.getresponse()
        assert created.status == 201, created.read()
        created.read()

        pieces = [bytes([i]) * 4096 for i in range(6)]
        digest = hashlib.sha256(b"".join(pieces)).hexdigest()

        def trickle():  # six pieces a second apart: 5 s, over twice the 2 s worker timeout
            for i, piece in enumerate(pieces):
                if i:
                    time.sleep(1)
                yield piece

        conn.request(
            "PUT",
            f"/api/v1/models/acme/slow/artifacts/sha256:{digest}",
            trickle(),
            {**headers, "Content-Type": "application/octet-stream", "Content-Length": str(6 * 4096)},
        )
        answer = conn.getresponse()
        body = answer.read()
        assert answer.status == 201, body
        assert json.loads(body) == {"sha256": digest, "size": 6 * 4096, "created": True}
        assert "WORKER TIMEOUT" not in (tmp_path / "web.log").read_text()
    finally:
        processes.stop(web)
