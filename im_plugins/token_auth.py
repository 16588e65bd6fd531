"""Default validate hook: any non-empty ``token`` is the user id (a development default).

Tags come from ``&tags=a,b``. Replace it in production with a real plugin (see
``examples/myauth``) or block it with ``--plugin no:token_auth``.
"""

from __future__ import annotations

from im_core import ConnectRequest, Identity, Reject, hookimpl


def split_tags(raw: str | None) -> tuple[str, ...]:
    return tuple(t for t in (s.strip() for s in (raw or "").split(",")) if t)


@hookimpl
def im_validate(request: ConnectRequest) -> Identity | Reject:
    if not request.token:
        return Reject("token: a non-empty token query parameter is required", 400)
    return Identity(request.token, tags=split_tags(request.query.get("tags")))
