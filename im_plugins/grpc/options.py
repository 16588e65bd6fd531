"""The gRPC plugin's options."""

from __future__ import annotations

import attrs

from im_core.options import option, optional_int, port, positive


def _optional_port(instance: object, attribute: attrs.Attribute[object], value: int | None) -> None:
    if value is not None:
        port(instance, attribute, value)


@attrs.define(kw_only=True)
class GrpcOptions:
    rpc_port: int = option(8081, "gRPC port", converter=int, validator=port)
    rpc_local_port: int | None = option(
        None,
        "port of a loopback-only gRPC listener serving im.basic without the API key, "
        "for original backends that cannot send one (default: off)",
        converter=optional_int,
        validator=_optional_port,
    )
    max_concurrent_rpcs: int = option(
        10_000,
        "concurrent gRPC calls (else RESOURCE_EXHAUSTED)",
        converter=int,
        validator=positive,
    )
