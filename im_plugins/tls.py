"""TLS for both listeners (docs/operations.md, "TLS").

``--tls-cert`` and ``--tls-key`` serve ``wss://`` and HTTPS on the HTTP port and
TLS on the gRPC port; without them both are plain. ``--tls-client-ca`` adds mutual
TLS for the push APIs: gRPC requires a client certificate signed by that CA in the
handshake; the HTTP port asks for one without requiring it (browsers on ``/conn``
and ``/sse`` cannot present one) and its API routes refuse a caller without a
verified one (docs/decisions.md, "TLS").

The files are read and checked with the options, so a bad value (a missing or
unreadable file, no PEM certificate or key in it, a key that does not match the
certificate) is one error line and exit status 2, before anything listens.
"""

from __future__ import annotations

import ssl
from typing import Any

import attrs

from im_core.options import option


def _optional_path(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _readable(instance: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None:
        read(value)


def read(path: str) -> bytes:
    """The file's bytes; ``ValueError`` saying why it cannot be read."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None


class _Encrypted(Exception):
    """The key file asked for a password: im takes unencrypted keys only."""


def _no_password() -> bytes:
    raise _Encrypted


@attrs.define(kw_only=True)
class TlsOptions:
    tls_cert: str | None = option(
        None,
        "PEM certificate (chain) file: serve wss:// + HTTPS and gRPC over TLS, with "
        "--tls-key (default: plain)",
        converter=_optional_path,
        validator=_readable,
    )
    tls_key: str | None = option(
        None,
        "PEM private key file of --tls-cert (unencrypted)",
        converter=_optional_path,
        validator=_readable,
    )
    tls_client_ca: str | None = option(
        None,
        "PEM CA certificates file: the push APIs (HTTP /api/v1, gRPC) require a client "
        "certificate signed by one (mutual TLS; default: off)",
        converter=_optional_path,
        validator=_readable,
    )

    def __attrs_post_init__(self) -> None:
        if self.tls_cert is not None and self.tls_key is None:
            raise ValueError("--tls-key: required with --tls-cert")
        if self.tls_key is not None and self.tls_cert is None:
            raise ValueError("--tls-cert: required with --tls-key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca: needs --tls-cert and --tls-key")
        if self.enabled:
            self.server_context()  # the files, checked together

    @property
    def enabled(self) -> bool:
        return self.tls_cert is not None

    @property
    def mutual(self) -> bool:
        """Whether the push APIs require a client certificate."""
        return self.tls_client_ca is not None

    def server_context(self) -> ssl.SSLContext:
        """The HTTP listener's context; ``ValueError`` naming the option at fault.

        Not ``ssl.create_default_context``: for client authentication that one trusts
        the system's CAs, and any publicly issued certificate would then pass as a
        client certificate.
        """
        cert, key, ca = self.tls_cert, self.tls_key, self.tls_client_ca
        assert cert is not None and key is not None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.options |= ssl.OP_NO_RENEGOTIATION  # a handshake per request is a DoS lever
        context.set_alpn_protocols(["http/1.1"])  # the port speaks HTTP/1.1 only
        _check_certificates("--tls-cert", cert)
        try:
            context.load_cert_chain(cert, key, password=_no_password)
        except _Encrypted:
            raise ValueError(f"--tls-key: {key} is encrypted; give an unencrypted key") from None
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise ValueError(
                    f"--tls-key: {key} does not match the certificate in {cert}"
                ) from None
            raise ValueError(f"--tls-key: {key} holds no PEM private key") from None
        except OSError as exc:  # removed or unreadable since the options were read
            raise ValueError(f"--tls-key: cannot read {key}: {exc.strerror or exc}") from None
        if ca is not None:
            _check_certificates("--tls-client-ca", ca, context)
            # Asked for, not required: the routes that need one check it (api.py).
            context.verify_mode = ssl.CERT_OPTIONAL
        return context

    def grpc_files(self) -> tuple[bytes, bytes, bytes | None]:
        """(key, certificate chain, client CAs or None) as gRPC takes them."""
        assert self.tls_cert is not None and self.tls_key is not None
        ca = self.tls_client_ca
        return read(self.tls_key), read(self.tls_cert), read(ca) if ca is not None else None


def _check_certificates(flag: str, path: str, into: ssl.SSLContext | None = None) -> None:
    """Load the PEM certificates in ``path`` as trusted (into a scratch context unless
    ``into`` is given): a file that holds none is refused here, by its option's name."""
    context = into or ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_verify_locations(cafile=path)
    except ssl.SSLError:
        raise ValueError(f"{flag}: {path} holds no PEM certificate") from None
    except OSError as exc:
        raise ValueError(f"{flag}: cannot read {path}: {exc.strerror or exc}") from None
