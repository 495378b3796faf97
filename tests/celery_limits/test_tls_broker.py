"""The broker's Redis behind TLS, with a URL Celery (kombu) connects with: `rediss://…?ssl_cert_reqs=CERT_REQUIRED&…`.
redis-py reads `required`, not `CERT_REQUIRED`: a client built from the URL alone failed every command, so a message
whose runs kill their worker process came back for good, and no worker could read the shared clock to drop a stale
run. Real TLS redis-server, a prefork worker."""

import shutil
import subprocess
import time

import pytest
from redis import Redis

from config.celery import MAX_AGE_HEADER
from tests import processes
from tests.celery_limits.conftest import in_log, start_worker
from tests.celery_limits.poison import kill_own_process

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def tls_redis(transactional_db, tmp_path):
    """A redis-server on a TLS port only, its certificate self-signed for 127.0.0.1; yields (port, CA file)."""
    processes.require_postgresql()
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed (apt-get install redis-server)"
    cert, key = tmp_path / "redis.crt", tmp_path / "redis.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    port, log = processes.free_port(), tmp_path / "redis.log"
    server = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--tls-cert-file", str(cert),
         "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no", "--save", "",
         "--appendonly", "no"],
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        processes.wait(in_log(log, "Ready to accept connections"), 10, f"redis to start\n{processes.tail(log)}")
        yield port, cert
    finally:
        server.terminate()
        server.wait(10)


def test_a_tls_broker_counts_deliveries_and_keeps_the_shared_clock(tls_redis, tmp_path):
    port, ca = tls_redis
    url = f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=CERT_REQUIRED&ssl_ca_certs={ca}"
    stale_runs, poison_runs, log = tmp_path / "stale-runs", tmp_path / "poison-runs", tmp_path / "worker.log"
    from config.celery import app

    with app.connection_for_write(url) as connection:
        # Stamped with this process's shared clock (the same machine's): it waits longer than its max age.
        kill_own_process.apply_async((str(stale_runs),), connection=connection, headers={MAX_AGE_HEADER: 0.5})
        time.sleep(0.6)
        kill_own_process.apply_async((str(poison_runs),), connection=connection)

    env = processes.service_env(url, TASK_MAX_DELIVERIES="2")
    worker = start_worker(
        env, log, "-P", "prefork", "-c", "1", "-n", f"tls-{port}@%h", "-I", "tests.celery_limits.poison"
    )
    try:
        # The Redis errors are logged at the first start: wait no longer than that to fail.
        ended = lambda: "giving up on" in log.read_text() or "could not" in log.read_text()  # noqa: E731
        processes.wait(ended, 30, f"the worker to give up\n{processes.tail(log)}")
        text = log.read_text()
        assert "could not" not in text, processes.tail(log)
        assert f"skipping {kill_own_process.name}" in text  # by the broker's clock, read over TLS
        assert not stale_runs.exists()
        assert poison_runs.read_text().count("run") == 2
        broker = Redis("127.0.0.1", port, ssl=True, ssl_ca_certs=str(ca), ssl_cert_reqs="required")
        assert broker.keys("registry:deliveries:*") == []  # the count, deleted at the rejection
        assert broker.llen("celery") == 0 and broker.hlen("unacked") == 0
    finally:
        processes.stop(worker)
