def test_healthz(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_me_with_token(personas):
    body = personas["auditor"].client().get("/api/v1/me").json()
    assert body["username"] == "auditor"
    assert body["groups"] == ["auditors"]
