"""Credentials inside URLs: found in one URL (refused where a client names a repository or a CI run) and masked
in any text (the logs and the append-only audit log, which could never lose a secret pasted into them).

A credential is a password in a URL's user part (`https://x-access-token:ghs_…@github.com/…`, GitLab's
`CI_REPOSITORY_URL`), any user part of an http(s) URL (GitHub takes a token as the user name), or a query value
whose name says it is a secret (`?token=…`, `X-Amz-Signature=…`). `ssh://git@host/…` and `git@host:org/repo`
name a user, not a credential.
"""

import re
from urllib.parse import parse_qsl, urlsplit

MASK = "***"
_PARAM_NAMES = (
    r"(?:access_?token|api_?key|apikey|auth|client_?secret|key|passw(?:or)?d|private_?token|secret|sig"
    r"|signature|token|x-amz-credential|x-amz-security-token|x-amz-signature|x-goog-signature)"
)
_SECRET_PARAM_NAME = re.compile(rf"^{_PARAM_NAMES}$", re.IGNORECASE)
# In running text: scheme://user:password@ or http(s)://user@, and a secret-named query parameter's value.
_USERINFO = re.compile(r"(?i)\b((?:https?|[a-z][a-z0-9+.-]*(?=://[^/\s@:]*:))://)([^/\s@]+)@")
_QUERY_VALUE = re.compile(rf"(?i)([?&]{_PARAM_NAMES}=)[^&#\s\"']+")


def problem(url: str) -> str:
    """Why this URL carries a credential, as advice a person can act on; "" when it does not."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""  # not a URL: its own validation says so
    if parts.password is not None:
        return "Remove user:password@ from the URL: it would be kept in the audit log and every export."
    if parts.username is not None and parts.scheme.lower() in ("http", "https"):
        return "Remove the user name (a token?) before @ from the URL: it would be kept in the audit log and exports."
    secret = [name for name, _ in parse_qsl(parts.query, keep_blank_values=True) if _SECRET_PARAM_NAME.match(name)]
    if secret:
        return f"Remove the query parameter {secret[0]!r} from the URL: it looks like a credential."
    return ""


def _masked_userinfo(match: re.Match) -> str:
    user, _, password = match.group(2).partition(":")
    if password:
        return f"{match.group(1)}{user}:{MASK}@"
    return f"{match.group(1)}{MASK}@"


def mask(text: str) -> str:
    """The text with every URL credential masked (the user name stays where a password follows it)."""
    if "://" not in text and "=" not in text:
        return text
    return _QUERY_VALUE.sub(lambda m: m.group(1) + MASK, _USERINFO.sub(_masked_userinfo, text))
