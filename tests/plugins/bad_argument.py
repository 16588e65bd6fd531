"""A plugin whose hook takes an argument the spec does not have."""

from im_core import hookimpl


@hookimpl
def im_validate(server, request, session):
    return None
