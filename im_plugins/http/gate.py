"""Admission at accept time: how many sockets the HTTP port holds, in all and per
client address, and how fast one address opens new ones.

Checked before a byte is read, so a flood of sockets is refused (503 / 429 with a
JSON body) instead of exhausting file descriptors and locking everyone out.
"""

from __future__ import annotations

import resource

from .options import HttpOptions

#: Gate key of a socket that holds no place at the gate (nothing to release).
UNCOUNTED = object()
#: Descriptors kept free for everything else (gRPC, the broker, files, logs).
RESERVE_MIN = 64


def descriptor_budget() -> int:
    """The open-files limit less a reserve: ``max_connections=0`` means this."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    return max(16, soft - max(RESERVE_MIN, soft // 20))


class Gate:
    __slots__ = ("_open", "_rate_at", "_recent", "max_total", "per_ip", "rate", "total")

    def __init__(self, options: HttpOptions) -> None:
        self.max_total = options.max_connections or descriptor_budget()
        self.per_ip = options.max_connections_per_ip
        self.rate = options.max_connect_rate_per_ip
        self.total = 0
        self._open: dict[str, int] = {}
        self._recent: dict[str, int] = {}  # address -> sockets opened in this second
        self._rate_at = 0.0  # start of the current one-second window

    def enter(self, ip: str | None, now: float) -> tuple[int, str] | None:
        """Count a new socket, or return the (status, message) that refuses it."""
        if self.total >= self.max_total:
            return 503, "server is at its connection limit, retry later"
        if ip is not None:
            if self.rate:
                if now - self._rate_at >= 1.0:
                    self._rate_at, self._recent = now, {}
                seen = self._recent.get(ip, 0) + 1
                self._recent[ip] = seen
                if seen > self.rate:
                    return 429, "too many new connections from this address, retry later"
            if self.per_ip:
                count = self._open.get(ip, 0)
                if count >= self.per_ip:
                    return 429, "too many connections from this address"
                self._open[ip] = count + 1
        self.total += 1
        return None

    def leave(self, ip: str | None) -> None:
        """A counted socket closed."""
        self.total -= 1
        if ip is not None and self.per_ip:
            count = self._open.get(ip, 0) - 1
            if count > 0:
                self._open[ip] = count
            else:
                self._open.pop(ip, None)
