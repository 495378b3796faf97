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


def test_repeated_wrong_passwords_lock_that_username_from_that_address(client, personas, settings):
    """django-axes: the fifth wrong password for one username from one address locks the pair (429), even
    the right password then; another address, or another user, is not locked; admin sign-in counts too."""
    wrong = {"username": "reviewer", "password": "wrong"}
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert b"didn't match" in client.post("/accounts/login/", wrong).content
    assert client.post("/admin/login/", wrong).status_code == 429
    right = client.post("/accounts/login/", {"username": "reviewer", "password": "pw-reviewer"})
    assert right.status_code == 429 and client.get("/").status_code == 302  # still signed out

    elsewhere = client.post(
        "/accounts/login/", {"username": "reviewer", "password": "pw-reviewer"}, REMOTE_ADDR="10.9.8.7"
    )
    assert elsewhere.status_code == 302
    other = client.post("/accounts/login/", {"username": "auditor", "password": "pw-auditor"})
    assert other.status_code == 302


def test_pages_forbid_scripts_other_than_the_sites_own(client, personas):
    """Content-Security-Policy on UI pages and on Swagger UI (its script is a file now, not inline)."""
    client.force_login(personas["owner"].user)
    for path in ("/", "/accounts/login/", "/api/docs/"):
        policy = client.get(path).headers["Content-Security-Policy"]
        directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
        assert directives["script-src"] == "'self'" and directives["frame-ancestors"] == "'none'", (path, policy)
        assert directives["object-src"] == "'none'" and directives["base-uri"] == "'none'"
    docs = client.get("/api/docs/").content.decode()
    assert "<script>" not in docs and "<script src=" in docs


def lock_out(client, settings, **headers) -> None:
    wrong = {"username": "reviewer", "password": "wrong"}
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert b"didn't match" in client.post("/accounts/login/", wrong, **headers).content
    assert client.post("/accounts/login/", wrong, **headers).status_code == 429


def sign_in(client, **headers) -> int:
    return client.post("/accounts/login/", {"username": "reviewer", "password": "pw-reviewer"}, **headers).status_code


def test_behind_a_proxy_each_client_is_counted_under_its_own_address(client, personas, settings):
    """With TRUSTED_PROXY_COUNT=1 the proxy's X-Forwarded-For entry is the address. Counted under the proxy's
    address, five wrong passwords from anyone locked the username for every user behind the proxy."""
    settings.TRUSTED_PROXY_COUNT = 1
    proxy = {"REMOTE_ADDR": "10.0.0.2"}
    lock_out(client, settings, HTTP_X_FORWARDED_FOR="203.0.113.7", **proxy)
    assert sign_in(client, HTTP_X_FORWARDED_FOR="203.0.113.7", **proxy) == 429
    # What the client itself put in the header (left of the proxy's entry) changes nothing.
    assert sign_in(client, HTTP_X_FORWARDED_FOR="198.51.100.9, 203.0.113.7", **proxy) == 429
    assert sign_in(client, HTTP_X_FORWARDED_FOR="198.51.100.9", **proxy) == 302  # another client


def test_without_trusted_proxies_forwarded_addresses_are_ignored(client, personas, settings):
    """By default the header is the client's to write: a locked-out client cannot escape by sending one."""
    assert settings.TRUSTED_PROXY_COUNT == 0
    lock_out(client, settings, REMOTE_ADDR="203.0.113.7")
    assert sign_in(client, REMOTE_ADDR="203.0.113.7", HTTP_X_FORWARDED_FOR="198.51.100.9") == 429


def test_a_request_past_the_proxies_or_with_a_garbled_entry_counts_under_the_connection(client, personas, settings):
    settings.TRUSTED_PROXY_COUNT = 2
    lock_out(client, settings, REMOTE_ADDR="203.0.113.7", HTTP_X_FORWARDED_FOR="192.0.2.1")  # one entry, not two
    assert sign_in(client, REMOTE_ADDR="203.0.113.7") == 429
    assert sign_in(client, REMOTE_ADDR="203.0.113.7", HTTP_X_FORWARDED_FOR="not-an-address, 10.0.0.3") == 429
    assert sign_in(client, REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="198.51.100.9, 10.0.0.3") == 302


def test_home_lists_every_visible_model_by_name_page_by_page_and_filters_by_name(client, personas):
    import re

    from guardian.shortcuts import assign_perm

    from registry import services as registry
    from registry.views import HOME_PAGE_SIZE

    owner, reviewer = personas["owner"].user, personas["outsider"].user
    names = [f"team{i % 3}/model-{i:03d}" for i in range(HOME_PAGE_SIZE + 10)]  # 6 of them hidden
    for full in names:
        namespace, name = full.split("/")
        model = registry.model_create(actor=owner, namespace=namespace, name=name)
        if not full.endswith("7"):
            assign_perm("view_registeredmodel", reviewer, model)
    registry.model_create(actor=owner, namespace="hidden", name="model-999")
    visible = sorted(n for n in names if not n.endswith("7"))
    client.force_login(reviewer)

    def shown(query: str = "") -> tuple[list[str], str]:
        page = client.get("/" + query).content.decode()
        return re.findall(r'<td><a href="/models/[^"]+/">([^<]+)</a></td>', page), page

    first, page = shown()
    assert first == visible[:HOME_PAGE_SIZE] and f"{len(visible)} in all" in page
    after = re.search(r'href="\?after=(\d+)" rel="next"', page)[1]
    second, _ = shown(f"?after={after}")
    assert second == visible[HOME_PAGE_SIZE:]
    filtered, page = shown("?q=TEAM1/model-01")
    assert filtered == [n for n in visible if n.startswith("team1/model-01")] and 'value="TEAM1/model-01"' in page
    none, page = shown("?q=hidden")
    assert none == [] and "No model you may see has" in page
