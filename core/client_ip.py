"""The address a request came from, for sign-in throttling (django-axes' AXES_CLIENT_IP_CALLABLE).

Behind TRUSTED_PROXY_COUNT proxies, each appends the address it took the connection from to
X-Forwarded-For, so the entry that many places from the right was written by the outermost of our own
proxies: it is the client. Entries left of it are whatever the client sent, and are never read (a client
could otherwise pick the address it is counted under). With no proxies configured, the header is
ignored: REMOTE_ADDR is the client.
"""

import ipaddress

from django.conf import settings


def client_ip(request) -> str | None:
    remote = request.META.get("REMOTE_ADDR")
    proxies = settings.TRUSTED_PROXY_COUNT
    if proxies == 0:
        return remote
    hops = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    if len(hops) < proxies:  # it did not come through all of our proxies: the connection is the client
        return remote
    try:
        return str(ipaddress.ip_address(hops[-proxies]))
    except ValueError:  # not what a proxy of ours writes: count the request under the connection's address
        return remote
