"""Which hosts a delivery may reach: public addresses, and WEBHOOK_ALLOWED_NETWORKS.

An attempt's answer goes into the delivery log, which webhook managers read, so a URL aimed inside the network
(cloud metadata, an internal admin, a service on localhost) would let them read that service. Production's
default (debug off, nothing allowed: tests/test_settings_validation.py) is set here through the `settings`
fixture; the receivers are real HTTP servers on loopback, and `localhost` really resolves to 127.0.0.1, so a
name that passes when the endpoint is saved and leads to loopback when connected to is refused then.
"""

import ipaddress
import ssl
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from audit.models import AuditEvent
from governance import webhooks
from governance.webhook_models import DeliveryState, WebhookAttempt, WebhookEndpoint
from tests.webhooks.conftest import register

pytestmark = pytest.mark.django_db

URL = "/api/v1/webhooks/"
HINT = "allow it with WEBHOOK_ALLOWED_NETWORKS"


@pytest.fixture
def production(settings):
    """Debug off and no network allowed: what the settings give a production deployment by default."""
    settings.DEBUG = False
    settings.WEBHOOK_ALLOWED_NETWORKS = []
    settings.WEBHOOK_RETRY_BASE_SECONDS = 30.0
    return settings


def create(client, url, name="ci"):
    return client.post(URL, {"name": name, "url": url, "event_types": ["*"]}, format="json")


def attempt_once(world, seed: str) -> webhooks.DeliveryOutcome:
    register(world["owner"].user, world["model"], seed)
    [delivery_id] = webhooks.dispatch().delivery_ids
    return webhooks.deliver(delivery_id=delivery_id)


def localhost_url(receiver, path="/hook") -> str:
    return f"http://localhost:{receiver.server.server_address[1]}{path}"


# --- at delivery: the address connected to ----------------------------------------------------------------


def test_a_name_resolving_to_loopback_is_refused_when_connected_and_reached_once_allowed(world, receiver, production):
    admin = world["admin"].client()
    r = create(admin, localhost_url(receiver))
    assert r.status_code == 201, r.content  # a name is not resolved when saved: what it resolves to later counts

    refused = attempt_once(world, "v1")
    expected = (
        "refused: localhost resolves only to addresses webhooks may not reach (127.0.0.1 is a loopback address); "
        + HINT
    )
    assert (refused.state, refused.attempt, refused.status, refused.error) == (DeliveryState.PENDING, 1, None, expected)
    assert receiver.requests == []  # not even a connection: nothing was sent, nothing read back
    # A failed attempt like any other: the next one waits the normal backoff (half to all of the 30 s base).
    assert 15 <= refused.retry_in <= 30
    [item] = admin.get(f"{URL}{r.json()['id']}/deliveries").json()["results"]
    assert [(a["status_code"], a["error"], a["response_excerpt"]) for a in item["attempt_log"]] == [
        (None, expected, "")
    ]

    production.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    allowed = attempt_once(world, "v2")
    assert (allowed.state, allowed.status, allowed.error) == (DeliveryState.DELIVERED, 200, "")
    assert len(receiver.to("/hook")) == 1

    # Checked at every connection, not once for the endpoint: the same name is refused again.
    production.WEBHOOK_ALLOWED_NETWORKS = ["10.0.0.0/8", "::1/128"]
    assert attempt_once(world, "v3").error == expected
    assert len(receiver.to("/hook")) == 1


def test_a_stored_loopback_address_is_refused_at_delivery(world, receiver, production):
    """An endpoint saved while its network was allowed (or before the guard existed) is checked when delivered."""
    production.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    endpoint, _ = webhooks.endpoint_create(actor=world["admin"].user, name="old", url=receiver.url(), event_types=["*"])
    production.WEBHOOK_ALLOWED_NETWORKS = []

    outcome = attempt_once(world, "v1")
    assert outcome.error == f"refused: 127.0.0.1 is a loopback address; {HINT}"
    assert outcome.status is None and receiver.requests == []
    assert WebhookAttempt.objects.get(delivery__endpoint=endpoint).error == outcome.error


# --- when saved: a literal address ------------------------------------------------------------------------

REFUSED_LITERALS = {
    "http://10.0.0.5/admin": "10.0.0.5 is a private address",
    "http://192.168.1.1:8443/": "192.168.1.1 is a private address",
    "http://169.254.169.254/latest/meta-data/": "169.254.169.254 is a link-local address",
    "http://100.64.0.1/": "100.64.0.1 is a shared (carrier-grade NAT) address",
    "http://127.0.0.1:8001/": "127.0.0.1 is a loopback address",
    "http://127.1:8001/": "127.0.0.1 is a loopback address",  # what the resolver makes of it
    "http://0x7f000001/": "127.0.0.1 is a loopback address",
    "http://0.0.0.0:8001/": "0.0.0.0 is the unspecified address",
    "http://224.0.0.1/": "224.0.0.1 is a multicast address",
    "http://[::1]:8001/": "::1 is a loopback address",
    "http://[fd00::5]/": "fd00::5 is a private address",
    "http://[fe80::1]/": "fe80::1 is a link-local address",
    "http://[::ffff:169.254.169.254]/": "::ffff:a9fe:a9fe (169.254.169.254) is a link-local address",
    "https://[::ffff:10.0.0.5]/": "::ffff:a00:5 (10.0.0.5) is a private address",
}


@pytest.mark.parametrize("url", REFUSED_LITERALS)
def test_a_literal_address_outside_the_rule_is_refused_with_400_on_create_and_update(world, production, url):
    admin = world["admin"].client()
    r = create(admin, url)
    assert r.status_code == 400, r.content
    error = r.json()["error"]
    assert error["message"] == f"url {REFUSED_LITERALS[url]}: webhooks reach only public addresses."
    assert "WEBHOOK_ALLOWED_NETWORKS" in error["detail"]["url"][0]
    assert not WebhookEndpoint.objects.exists()
    assert not AuditEvent.objects.filter(action="webhook.created").exists()

    hook = create(admin, "https://hooks.example.com/registry", name="good").json()["id"]
    r = admin.patch(f"{URL}{hook}", {"url": url}, format="json")
    assert r.status_code == 400, r.content
    assert REFUSED_LITERALS[url] in r.json()["error"]["message"]
    assert WebhookEndpoint.objects.get(pk=hook).url == "https://hooks.example.com/registry"
    assert not AuditEvent.objects.filter(action="webhook.updated").exists()


def test_public_literals_and_allowed_networks_are_accepted(world, production):
    admin = world["admin"].client()
    assert (
        create(admin, "https://hooks.example.com/hook", name="a").status_code == 201
    )  # a name: resolved only when delivered
    assert create(admin, "http://8.8.8.8/hook", name="b").status_code == 201
    assert create(admin, "https://[2606:4700::1111]/hook", name="c").status_code == 201
    assert create(admin, "http://10.0.0.5/hook", name="d").status_code == 400
    production.WEBHOOK_ALLOWED_NETWORKS = ["10.0.0.0/8", "fd00::/8"]
    assert create(admin, "http://10.0.0.5/hook", name="d").status_code == 201
    assert create(admin, "http://[::ffff:10.0.0.6]/hook", name="e").status_code == 201
    assert create(admin, "http://[fd00::5]/hook", name="f").status_code == 201
    assert create(admin, "http://192.168.1.1/hook", name="g").status_code == 400


# --- the rule itself ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "refusal"),
    [
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
        ("::ffff:8.8.8.8", None),  # mapped: what counts is the IPv4 address reached
        ("64:ff9b::808:808", None),  # NAT64 of 8.8.8.8
        ("2002:808:808::1", None),  # 6to4 of 8.8.8.8
        ("172.16.0.1", "172.16.0.1 is a private address"),
        ("240.0.0.1", "240.0.0.1 is a reserved address"),
        ("255.255.255.255", "255.255.255.255 is a reserved address"),
        ("198.18.0.1", "198.18.0.1 is a private address"),
        ("ff02::1", "ff02::1 is a multicast address"),
        ("64:ff9b::a00:5", "64:ff9b::a00:5 (10.0.0.5) is a private address"),
        ("2002:a00:5::1", "2002:a00:5::1 (10.0.0.5) is a private address"),
        ("::ffff:127.0.0.1", "::ffff:7f00:1 (127.0.0.1) is a loopback address"),
        ("fec0::1", "fec0::1 is not a public address"),  # site-local, deprecated but not global
        ("192.0.0.8", "192.0.0.8 is an IETF protocol assignment address"),  # Python 3.11 calls it global
        ("192.0.0.170", "192.0.0.170 is an IETF protocol assignment address"),
        ("192.0.0.9", None),  # PCP anycast: globally reachable
    ],
)
def test_only_global_unicast_addresses_pass(production, address, refusal):
    assert webhooks.egress_refusal(ipaddress.ip_address(address)) == refusal


def test_allowed_networks_admit_an_address_in_either_form(production):
    production.WEBHOOK_ALLOWED_NETWORKS = ["10.0.0.0/8", "169.254.169.254/32"]
    for address in ("10.1.2.3", "::ffff:10.1.2.3", "169.254.169.254"):
        assert webhooks.egress_refusal(ipaddress.ip_address(address)) is None
    assert webhooks.egress_refusal(ipaddress.ip_address("169.254.169.253")) == "169.254.169.253 is a link-local address"


# --- https: the name is still what TLS verifies -------------------------------------------------------------


def _certificate(tmp_path, name: str) -> tuple:
    """A CA and a server certificate for `name` signed by it, as PEM files."""
    now = datetime.now(UTC)

    def build(subject, issuer, public_key, signer, *, ca: bool, san=None):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            ).add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        else:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = build("egress test CA", "egress test CA", ca_key.public_key(), ca_key, ca=True)
    server = build(name, "egress test CA", key.public_key(), ca_key, ca=False, san=name)
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(pem))
    (tmp_path / "server.pem").write_bytes(server.public_bytes(pem))
    (tmp_path / "server.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key"


@pytest.mark.parametrize(("certified", "delivered"), [("localhost", True), ("elsewhere.example", False)])
def test_https_verifies_and_sends_the_host_name_not_the_address(
    world, production, tmp_path, monkeypatch, certified, delivered
):
    ca, cert, key = _certificate(tmp_path, certified)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # OpenSSL's default trust store, read by every new context
    server_names = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: server_names.append(name)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        production.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]
        url = f"https://localhost:{server.server_address[1]}/hook"
        webhooks.endpoint_create(actor=world["admin"].user, name="tls", url=url, event_types=["*"])
        outcome = attempt_once(world, "v1")
    finally:
        server.shutdown()
        server.server_close()
    assert server_names[:1] == ["localhost"]  # SNI: the name, although 127.0.0.1 is what was checked and connected
    if delivered:
        assert (outcome.state, outcome.status) == (DeliveryState.DELIVERED, 204)
    else:
        assert outcome.status is None
        assert "Hostname mismatch, certificate is not valid for 'localhost'" in outcome.error, outcome.error
