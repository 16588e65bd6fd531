"""A plugin with a misspelled hook name (the tests of plugin loading)."""

from im_core import hookimpl


@hookimpl
def im_valdate(server, request):
    return None
