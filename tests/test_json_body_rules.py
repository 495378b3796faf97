"""JSON body rules beyond the syntax: a body naming one member twice is refused (json.loads keeps the last, so
`{"name": "a", "name": "b"}` created a model the sender may not have meant), and so is a compressed body."""

import json

import pytest

from registry.models import RegisteredModel

pytestmark = pytest.mark.django_db


def post_raw(client, path: str, body: str):
    return client.post(path, data=body, content_type="application/json")


def test_a_repeated_name_is_refused_and_nothing_is_written(personas):
    client = personas["owner"].client()
    sent = post_raw(client, "/api/v1/models/", '{"namespace": "acme", "name": "churn", "name": "other"}')
    assert sent.status_code == 400, sent.json()
    assert "'name' appears more than once" in sent.json()["error"]["message"]
    assert not RegisteredModel.objects.exists()


def test_a_repeated_name_deep_inside_is_refused_too(personas):
    client = personas["owner"].client()
    assert post_raw(client, "/api/v1/models/", '{"namespace": "acme", "name": "churn"}').status_code == 201
    body = '{"manifest": {"files": [{"path": "a", "size": 1, "size": 2, "sha256": "' + "0" * 64 + '"}]}}'
    sent = post_raw(client, "/api/v1/models/acme/churn/versions/", body)
    assert sent.status_code == 400 and "'size' appears more than once" in sent.json()["error"]["message"]


def test_the_same_name_in_sibling_objects_is_fine(personas):
    client = personas["owner"].client()
    body = '{"namespace": "acme", "name": "churn", "description": "x"}'
    assert post_raw(client, "/api/v1/models/", body).status_code == 201
    files = [{"path": f"f{i}", "size": 0, "sha256": "0" * 64} for i in range(2)]  # "path" in each: fine
    sent = post_raw(
        client,
        "/api/v1/models/acme/churn/versions/",
        json.dumps({"artifact_uri": "s3://b/p", "manifest": {"files": files}}),
    )
    assert sent.status_code == 201, sent.json()


def test_a_compressed_body_is_refused_as_such(personas):
    """Content-Encoding other than identity, where only lineage ingest takes gzip: a 400 saying so, not a JSON
    error about byte 0x8b (gzip) nor a body read as if plain (br)."""
    import gzip

    client = personas["owner"].client()
    body = json.dumps({"namespace": "acme", "name": "churn"}).encode()
    for encoding, data in (("gzip", gzip.compress(body)), ("br", body)):
        sent = client.post(
            "/api/v1/models/", data=data, content_type="application/json", HTTP_CONTENT_ENCODING=encoding
        )
        assert (sent.status_code, sent.json()["error"]["code"]) == (400, "unsupported_encoding"), sent.json()
        assert f"Content-Encoding '{encoding}'" in sent.json()["error"]["message"]
    assert not RegisteredModel.objects.exists()
    plain = client.post("/api/v1/models/", data=body, content_type="application/json", HTTP_CONTENT_ENCODING="identity")
    assert plain.status_code == 201


def test_a_compressed_readme_is_refused_as_such(personas):
    """A gzip README for a card import was 'not valid utf-8 text': the same rule as JSON bodies (one place)."""
    import gzip

    client = personas["owner"].client()
    assert client.post("/api/v1/models/", {"namespace": "acme", "name": "churn"}, format="json").status_code == 201
    files = [{"path": "f", "size": 0, "sha256": "0" * 64}]
    body = {"artifact_uri": "s3://b/p", "manifest": {"files": files}}
    assert client.post("/api/v1/models/acme/churn/versions/", body, format="json").status_code == 201
    sent = client.post(
        "/api/v1/models/acme/churn/versions/1/card",
        data=gzip.compress(b"---\nlicense: mit\n---\n# Model card\n"),
        content_type="text/markdown",
        HTTP_CONTENT_ENCODING="gzip",
    )
    assert (sent.status_code, sent.json()["error"]["code"]) == (400, "unsupported_encoding"), sent.json()
