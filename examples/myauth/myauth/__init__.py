"""im plugin: tokens signed with HMAC-SHA256 (a compact JWT-like format).

Token = base64url(json claims) "." base64url(HMAC-SHA256(secret, first part)), with
claims ``{"sub": user id, "exp": unix seconds, "tags": [...]}``. The secret comes
from ``MYAUTH_SECRET`` (or ``--myauth-secret``). Make a token with
``python -m myauth USER [--ttl SECONDS] [--tag T ...]``.

Because this plugin always answers (Identity or Reject), im's development
``token_auth`` plugin is never consulted once it is loaded.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from im_core import ConfigError, ConnectRequest, Identity, Reject, hookimpl
from im_core.options import option

SECRET_ENV = "MYAUTH_SECRET"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_token(user: str, secret: str, ttl: float = 3600, tags: Sequence[str] = ()) -> str:
    claims = {"sub": user, "exp": int(time.time() + ttl), "tags": list(tags)}
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest()
    return f"{body}.{_b64(sig)}"


def check_token(token: str, secret: str, now: float | None = None) -> Identity | Reject:
    body, _, sig = token.partition(".")
    if not body or not sig:
        return Reject("token: malformed (expected BODY.SIGNATURE)", 401)
    want = hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest()
    try:
        good = hmac.compare_digest(want, _unb64(sig))
        claims = json.loads(_unb64(body)) if good else None
    except (ValueError, TypeError):
        return Reject("token: malformed", 401)
    if not good:
        return Reject("token: bad signature", 401)
    if not isinstance(claims, dict) or not isinstance(claims.get("sub"), str) or not claims["sub"]:
        return Reject("token: no subject", 401)
    if float(claims.get("exp", 0)) < (time.time() if now is None else now):
        return Reject("token: expired", 401)
    return Identity(claims["sub"], tags=tuple(claims.get("tags") or ()))


@attrs.define(kw_only=True)
class MyauthOptions:
    myauth_secret: str | None = option(None, "HMAC secret for myauth tokens (env MYAUTH_SECRET)")


@hookimpl
def im_add_options(add: Callable[..., None]) -> None:
    add(MyauthOptions)


def _secret(server: Any) -> str | None:
    return server.options.of(MyauthOptions).myauth_secret or os.environ.get(SECRET_ENV)


@hookimpl
def im_startup(server: Any) -> None:
    if not _secret(server):  # refuse to start rather than refuse every client
        raise ConfigError(f"no secret: set {SECRET_ENV} or --myauth-secret")


@hookimpl
def im_validate(server: Any, request: ConnectRequest) -> Identity | Reject:
    secret = _secret(server)
    if not secret:  # checked at startup; the secret cannot go away meanwhile
        return Reject("internal error", 500)
    if not request.token:
        return Reject("token: required", 401)
    return check_token(request.token, secret)
