"""Which addresses a webhook delivery may connect to (docs/webhooks.md, "Which hosts a webhook may reach").

An attempt's answer goes into the delivery log, which webhook managers read: a URL inside the network (cloud
metadata at 169.254.169.254, an admin on 10.x, a service on localhost) would let them read that service. So a
delivery connects only to public addresses and to WEBHOOK_ALLOWED_NETWORKS (debug adds loopback), checked by
governance.webhooks on each address a host resolves to as it is connected to.
"""

import ipaddress
import socket
from functools import lru_cache

from django.conf import settings

ALLOW_HINT = "allow it with WEBHOOK_ALLOWED_NETWORKS"
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598): Python counts it neither way
# IETF protocol assignments (RFC 6890): not globally reachable, but for the PCP and TURN anycast addresses. Python
# before 3.12.4 calls most of the block global (192.0.0.8, say), so the rule would depend on the Python version.
_PROTOCOL_ASSIGNMENTS = ipaddress.ip_network("192.0.0.0/24")
_GLOBAL_ANYCAST = {ipaddress.ip_address("192.0.0.9"), ipaddress.ip_address("192.0.0.10")}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the last 32 bits are the IPv4 address reached


class EgressRefused(OSError):
    """No address the host resolves to may be connected to."""


@lru_cache(maxsize=8)
def _networks(cidrs: tuple[str, ...]) -> tuple:
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


def ip_literal(host: str):
    """The address `host` spells, in any form the resolver takes as one (`127.1`, `0x7f000001` too), else None."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefx." for c in host.lower()) and host[0].isdigit():
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _reached(address):
    """The IPv4 address an IPv6 one leads to (mapped ::ffff:a.b.c.d, NAT64, 6to4), else the address itself."""
    if address.version == 6:
        if address.ipv4_mapped or address.sixtofour:
            return address.ipv4_mapped or address.sixtofour
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def _kind(address) -> str | None:
    """None for a public (global unicast) address, else what it is."""
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:  # 169.254.169.254, the cloud metadata service, included
        return "a link-local address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_multicast:
        return "a multicast address"
    if address in _SHARED:
        return "a shared (carrier-grade NAT) address"
    if address in _PROTOCOL_ASSIGNMENTS and address not in _GLOBAL_ANYCAST:
        return "an IETF protocol assignment address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private:
        return "a private address"
    if not address.is_global or (address.version == 6 and address.is_site_local):
        return "not a public address"
    return None


def egress_refusal(address) -> str | None:
    """None when a delivery may connect to `address` (an ipaddress address): a public one, or one inside
    WEBHOOK_ALLOWED_NETWORKS (debug adds loopback there). Otherwise why not, naming the address."""
    reached = _reached(address)
    if any(a in network for network in _networks(tuple(settings.WEBHOOK_ALLOWED_NETWORKS)) for a in (address, reached)):
        return None
    kind = _kind(reached)
    if kind is None:
        return None
    return f"{address} ({reached}) is {kind}" if reached != address else f"{address} is {kind}"


def host_refusal(host: str, refusals: list[str]) -> str:
    """Why nothing `host` resolved to may be reached, given each address's egress_refusal(): the reason a delivery
    records, and the one webhook_egress_check reports."""
    listed = ", ".join(refusals)
    where = refusals[0] if ip_literal(host) else f"{host} resolves only to addresses webhooks may not reach ({listed})"
    return f"refused: {where}; {ALLOW_HINT}"
