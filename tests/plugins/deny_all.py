"""A validate plugin that refuses everyone (the tests of validate precedence)."""

from im_core import Reject, hookimpl


@hookimpl
def im_validate(request) -> Reject:
    return Reject("deny_all says no", 403)
