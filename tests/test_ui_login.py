from registry.services import model_create


def test_login_page_and_session(client, personas):
    assert client.get("/").status_code == 302  # anonymous -> login
    page = client.get("/accounts/login/")
    assert page.status_code == 200 and b'name="password"' in page.content
    bad = client.post("/accounts/login/", {"username": "reviewer", "password": "wrong"})
    assert b"didn't match" in bad.content
    ok = client.post("/accounts/login/", {"username": "reviewer", "password": "pw-reviewer"})
    assert ok.status_code == 302
    model_create(actor=personas["owner"].user, namespace="acme", name="visible")
    home = client.get("/")
    assert home.status_code == 200 and b"acme/visible" in home.content


def test_home_hides_models_the_user_may_not_see(client, personas):
    model_create(actor=personas["owner"].user, namespace="acme", name="secret")
    client.force_login(personas["outsider"].user)
    page = client.get("/")
    assert page.status_code == 200 and b"acme/secret" not in page.content


def test_session_api_write_needs_csrf(personas):
    from django.test import Client

    csrf_client = Client(enforce_csrf_checks=True)
    csrf_client.force_login(personas["owner"].user)
    r = csrf_client.post("/api/v1/models/", {"namespace": "a", "name": "b"}, content_type="application/json")
    assert r.status_code == 403 and "CSRF" in r.json()["error"]["message"]
