"""An API response is freed as soon as the server has sent it, not at the garbage collector's next full pass.

A DRF response refers to itself and to its view, which refers back to it;
core.middleware.ReleaseResponseMiddleware cuts that cycle. With the collector off, the last reference the
server drops must free the response: otherwise each page of versions stays in a web worker's memory until a
full collection, and the worker keeps the high-water mark that leaves.
"""

import gc
import io
import json
import sys
import weakref

from config.wsgi import application
from registry import services
from registry.models import RegisteredModel


def wsgi_get(path: str, token: str):
    """One request through the WSGI application, as gunicorn makes it: (status, body, response)."""
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "page_size=100",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "HTTP_HOST": "testserver",
        "HTTP_AUTHORIZATION": f"Bearer {token}",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.url_scheme": "http",
    }
    statuses = []
    response = application(environ, lambda status, headers, exc_info=None: statuses.append(status))
    body = b"".join(response)
    response.close()  # what the server does once it has sent the body
    return statuses[0], body, response


def test_a_page_of_versions_is_freed_once_sent_without_the_collector(transactional_db, personas):
    owner = personas["owner"]
    model = services.model_create(actor=owner.user, namespace="acme", name="churn")
    for i in range(3):
        files = [{"path": "model.bin", "size": 1, "sha256": f"{i:064x}"}]
        services.version_register(
            actor=owner.user,
            model=model,
            content=services.VersionContent(artifact_uri=f"s3://b/{i}/", manifest={"files": files}),
            tags={},
        )
    assert RegisteredModel.objects.get(pk=model.pk).versions.count() == 3

    gc.collect()
    gc.disable()
    try:
        status, body, response = wsgi_get("/api/v1/models/acme/churn/versions/", owner.token)
        assert status == "200 OK", body[:500]
        assert [v["number"] for v in json.loads(body)["results"]] == [3, 2, 1]
        sent = weakref.ref(response)
        del response
        assert sent() is None, "the response outlived the request: something still refers to it"
    finally:
        gc.enable()
