"""Who is calling: the token check, the caller's identity (who may see and cancel a job), and the Host check.

With tokens, every request must carry one, as ``Authorization: Bearer TOKEN``
or as HTTP Basic with the token as the password (what AUTOMATIC1111 clients
send for ``--api-auth user:password``, and what a browser asks for itself).
Tokens are compared in constant time, against every configured token.

A caller is its token (none on a loopback server without tokens) plus the
client id it may send (``X-Sfumato-Client`` header or ``client`` query
parameter; the web page makes one per browser). Jobs belong to the caller that
submitted them: only it lists, follows and cancels them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from urllib.parse import urlsplit

from .config import ServeConfig, is_loopback
from .errors import ApiError

CLIENT_HEADER = "X-Sfumato-Client"
_CLIENT = re.compile(r"[A-Za-z0-9_-]{1,64}")


def presented_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2]
    return None


def matching_token(config: ServeConfig, presented: str | None) -> str | None:
    """The configured token equal to ``presented``; every token is compared, each in constant time."""
    found = None
    given = (presented or "").encode("utf-8")
    for token in config.tokens:
        if hmac.compare_digest(given, token.encode("utf-8")):
            found = token
    return found if presented else None


def caller(config: ServeConfig, headers, query) -> str:
    """The caller's identity, or ApiError 401 when a token is required and missing or wrong."""
    owner = "local"
    if config.tokens:
        token = matching_token(config, presented_token(headers.get("authorization")))
        if token is None:
            what = "no token" if not headers.get("authorization") else "a wrong token"
            raise ApiError(401, f"Authorization: this server needs its token and the request carried {what}; send "
                                f"'Authorization: Bearer TOKEN' (or HTTP Basic with the token as the password)",
                           "Authorization")
        owner = "t" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:16]
    client = headers.get(CLIENT_HEADER) or query.get("client")
    if client:
        if not _CLIENT.fullmatch(client):
            raise ApiError(400, f"{CLIENT_HEADER} must be 1 to 64 letters, digits, '-' or '_', got {client[:80]!r}",
                           CLIENT_HEADER)
        owner += "/" + client
    return owner


def check_origin(config: ServeConfig, headers, method: str) -> None:
    """Without a token, only pages of this server may talk to it (no DNS rebinding, no cross-site posts)."""
    if config.tokens:
        return
    host = headers.get("host", "")
    name = urlsplit(f"//{host}").hostname or ""
    if not (is_loopback(name) or name == config.host.strip("[]").lower()):
        raise ApiError(403, f"Host {host!r}: this server answers only to its own address on loopback; use "
                            f"http://127.0.0.1:{config.port}/ (or start it with --token)", "Host")
    origin = headers.get("origin")
    if origin and method not in ("GET", "HEAD", "OPTIONS"):
        origin_host = urlsplit(origin).hostname or ""
        if not (is_loopback(origin_host) or origin_host == config.host.strip("[]").lower()):
            raise ApiError(403, f"Origin {origin!r}: pages of other sites may not send requests to this server",
                           "Origin")
