"""A plugin whose im_startup raises (the tests of startup failures)."""

from im_core import hookimpl


@hookimpl
def im_startup(server) -> None:
    raise RuntimeError("cannot reach the user database")
