"""Entity tags for the API's mutable resources, the If-Match check that makes a read-modify-write safe, and
If-None-Match, which spares a client that polls a resource the body it already holds.

A client that changes part of a resource by sending a whole field (a version's tags replace the map) reads it
first; another writer between its read and its write would be silently undone. With `If-Match: <the ETag it
read>` the write happens only if the resource is still what the client saw, compared under the write's own row
lock, else a 412 that says what to do. Without If-Match the write is unconditional, as before.
"""

import hashlib
import json

from django.http import HttpResponseNotModified
from django.utils.http import parse_etags

from core.errors import PreconditionFailed


def etag_of(state: dict) -> str:
    """A strong entity tag for a resource whose every changeable part `state` holds (JSON-serializable)."""
    canonical = json.dumps(state, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return '"' + hashlib.sha256(canonical.encode()).hexdigest()[:32] + '"'


def check_if_match(if_match: str | None, current: str | None, what: str) -> None:
    """Refuse the write (412) unless the If-Match header is absent, `*`, or lists `current`, the ETag of what the
    write builds on (None: nothing yet, which no If-Match matches, not even `*`). A weak tag (W/"...") never
    matches: If-Match compares strongly (RFC 9110, 13.1.1)."""
    if if_match is None:
        return
    tags = parse_etags(if_match)
    if current is not None and (tags == ["*"] or current in tags):
        return
    if current is None:
        problem = f"{what} does not exist yet, so If-Match '{if_match[:80]}' cannot match: send the first without it."
        raise PreconditionFailed(problem, detail={"If-Match": [problem]})
    if "W/" + current in tags:  # a proxy that compressed the response may have weakened the ETag
        problem = (
            f"If-Match holds W/{current}, a weak tag, which If-Match never matches: send the ETag without W/ "
            f"({what} is as you read it). A proxy that compresses responses on the way to you may have added it."
        )
        raise PreconditionFailed(problem, detail={"If-Match": [problem]})
    if not tags:
        problem = f"If-Match '{if_match[:80]}' holds no entity tag: send the ETag header of your last read, quoted."
        raise PreconditionFailed(problem, detail={"If-Match": [problem]})
    raise PreconditionFailed(
        f"{what} changed since you read it (If-Match {', '.join(tags)[:200]}; it is now {current}), and nothing was "
        "written. Read it again, make your change on what it holds now, and send that read's ETag.",
        detail={"etag": current},
    )


def not_modified_if_unchanged(request, response):
    """`response` to a GET or HEAD, or a 304 Not Modified (its ETag and caching headers, no body) when the request's
    If-None-Match lists the response's ETag, compared weakly (RFC 9110, 13.1.2: W/"x" matches "x") or is `*`."""
    header = request.META.get("HTTP_IF_NONE_MATCH")
    etag = response.get("ETag")
    if header is None or etag is None or request.method not in ("GET", "HEAD") or response.status_code != 200:
        return response
    tags = {tag.removeprefix("W/") for tag in parse_etags(header)}
    if "*" not in tags and etag.removeprefix("W/") not in tags:
        return response
    unchanged = HttpResponseNotModified()
    for name in ("ETag", "Cache-Control", "Vary"):
        if name in response:
            unchanged[name] = response[name]
    return unchanged
