"""Credentials inside URLs: found in one URL (refused where a client names a repository or a CI run) and masked
in any text (the logs and the append-only audit log, which could never lose a secret pasted into them).

A credential is a password in a URL's user part (`https://x-access-token:ghs_…@github.com/…`, GitLab's
`CI_REPOSITORY_URL`), any user part of an http(s) URL (GitHub takes a token as the user name, with or without
`:x-oauth-basic` after it), or a query value whose name says it is a secret (`?token=…`, `private-token=…`,
`X-Amz-Signature=…`, the name percent-encoded or not). `ssh://git@host/…` and `git@host:org/repo` name a user,
not a credential. The user part ends at the last `@` before the path, as urllib reads it.

registry/cli.py repeats these rules (it runs as one file without the project); tests/registry/test_cli_local_checks.py
holds the two to the same answers.
"""

import re
from urllib.parse import unquote_plus, urlsplit

MASK = "***"
# A name that is, or ends in (after `_` or `-`), a word for a secret: token, hf_token, private-token, api_key,
# aws_secret_access_key, client_secret, X-Amz-Signature, password... (`sort_key` too: masking more is harmless).
_SECRET_PARAM_NAME = re.compile(
    r"(?:[a-z0-9]+[_-])*(?:access[_-]?)?(?:token|secret|key|passw(?:or)?d|pwd|signature|sig|credentials?)"
    r"|apikey|accesstoken|privatetoken|clientsecret|auth|jwt",
    re.IGNORECASE,
)
# In running text: scheme://userinfo@ (userinfo up to the last @ of the authority) and query parameters.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/?#\s]*)@")
_PARAM = re.compile(r"([?&;])([^=&;#\s\"'?]+)=([^&;#\s\"']*)")


def _secret_name(name: str) -> bool:
    return _SECRET_PARAM_NAME.fullmatch(unquote_plus(name)) is not None  # %74oken is token


def _userinfo_is_credential(scheme: str, userinfo: str) -> bool:
    """A password, or any user part of an http(s) URL (git+https:// too: pip's and VCS tools' form)."""
    return ":" in userinfo or scheme.lower().rpartition("+")[2] in ("http", "https")


def problem(url: str) -> str:
    """Why this URL carries a credential, as advice a person can act on; "" when it does not."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL urllib reads (`https://u:tok@[::1/x`): what mask() hides below still counts
        parts = None
    if parts is not None:
        userinfo, at, _ = parts.netloc.rpartition("@")
        if at and ":" in userinfo:
            return "Remove user:password@ from the URL: it would be kept in the audit log and every export."
        if at and _userinfo_is_credential(parts.scheme, userinfo):
            return (
                "Remove the user name (a token?) before @ from the URL: it would be kept in the audit log and exports."
            )
        for piece in re.split("[&;]", parts.query):
            name = piece.partition("=")[0]
            if name and _secret_name(name):
                return f"Remove the query parameter {unquote_plus(name)!r} from the URL: it looks like a credential."
    if mask(url) != url:  # a secret-named parameter where urllib reads no query (`;token=` in the path, a fragment)
        return "Remove the credential from the URL: it would be kept in the audit log and every export."
    return ""


def mask(text: str) -> str:
    """The text with every URL credential masked: an http(s) URL's whole user part, another scheme's where it holds
    a password (`ssh://git@host` stays), and the value of every secret-named query parameter."""
    if "://" not in text and "=" not in text:
        return text

    def userinfo(match: re.Match) -> str:
        scheme = match.group(1)[:-3]
        return f"{match.group(1)}{MASK}@" if _userinfo_is_credential(scheme, match.group(2)) else match.group(0)

    def param(match: re.Match) -> str:
        return f"{match.group(1)}{match.group(2)}={MASK}" if _secret_name(match.group(2)) else match.group(0)

    return _PARAM.sub(param, _USERINFO.sub(userinfo, text))
