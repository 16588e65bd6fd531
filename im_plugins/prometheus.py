"""Prometheus metrics at ``GET /metrics`` on the HTTP port (``--plugin prometheus``;
needs ``pip install 'im[metrics]'``). docs/operations.md, "Metrics", lists them.

Two sources, neither on a hot path:

- the node's own counters (``server.metrics``, ``im_core.metrics``) and what the
  public server API answers (queue length, the broker's round trips, the online
  count and live nodes), turned into metric families when scraped by
  ``NodeCollector``;
- low-rate events from hooks (refused connections, disconnects, ack outcomes),
  counted as they happen (``Events``) and exported by the same collector.

Each node has its own registry (several nodes may share a process, as in the
tests), with the process's CPU and memory beside im's (``ProcessMetrics``).
"""

from __future__ import annotations

import math
import os
import resource
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from im_core import hookimpl
from im_core.errors import ImError
from im_core.events import CLOSE_CLASSES, close_class
from im_core.identity import Reject
from im_core.metrics import Histogram
from im_core.server_api import ServerAPI

PATH = "/metrics"
#: Seconds the cluster-wide numbers (a broker round trip) are reused between
#: scrapes: a client calling /metrics in a loop costs the broker nothing more.
CLUSTER_EVERY = 1.0
#: Close codes a client may send back are many: codes im does not name are "other".
KNOWN_CODES = frozenset(CLOSE_CLASSES) | frozenset(range(1000, 1016))

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def histogram(family: HistogramMetricFamily, labels: list[str], h: Histogram) -> None:
    buckets = [("+Inf" if math.isinf(bound) else repr(bound), n) for bound, n in h.cumulative()]
    family.add_metric(labels, buckets, sum_value=h.sum)


class NodeCollector(Collector):
    """The node's counters as metric families, read when scraped."""

    def __init__(self, server: ServerAPI, events: Events) -> None:
        self.server = server
        self.events = events
        #: cluster-wide gauges (name -> value, help), refreshed before a scrape
        self.cluster: dict[str, tuple[float, str]] = {}

    def collect(self) -> Iterable[Metric]:
        server, metrics = self.server, self.server.metrics

        open_now = GaugeMetricFamily(
            "im_connections",
            "Client connections open on this node, by transport and codec.",
            labels=["transport", "codec"],
        )
        for (transport, codec), n in sorted(metrics.connections().items()):
            open_now.add_metric([transport, codec], n)
        yield open_now
        connects = CounterMetricFamily(
            "im_connects",
            "Client connections registered on this node, by transport and codec.",
            labels=["transport", "codec"],
        )
        for (transport, codec), n in sorted(metrics.connects().items()):
            connects.add_metric([transport, codec], n)
        yield connects

        pushes = CounterMetricFamily(
            "im_pushes",
            "Push calls by API (http, grpc, embedded), method, kind of push "
            "(user, users, broadcast, tags) and outcome (ok or the error code).",
            labels=["api", "method", "kind", "outcome"],
        )
        for (api, method, kind, outcome), n in sorted(dict(metrics.pushes).items()):
            pushes.add_metric([api, method, kind, outcome], n)
        yield pushes
        yield CounterMetricFamily(
            "im_deliveries",
            "Messages written to client connections (pushes, re-sends, replies).",
            value=metrics.frames_written,
        )
        yield CounterMetricFamily(
            "im_written_bytes",
            "Bytes written to client connections, framing included.",
            value=metrics.bytes_written,
        )
        yield CounterMetricFamily(
            "im_inbound_frames",
            "Data messages received from clients (business data and acks).",
            value=metrics.inbound_frames,
        )
        latency = HistogramMetricFamily(
            "im_push_to_write_seconds",
            "From a push call (or its arrival from another node) to the socket writes "
            "of its frames: one sample per outbox flush, its oldest push.",
        )
        histogram(latency, [], metrics.push_to_write)
        yield latency

        yield GaugeMetricFamily(
            "im_broadcast_queue_length",
            "Broadcasts and tag pushes waiting for a broadcast worker.",
            value=server.queue_length,
        )
        yield GaugeMetricFamily(
            "im_broadcast_queue_capacity",
            "Size of the broadcast queue (--broadcast-buffer); pushes are refused past 80 %.",
            value=server.options.broadcast_buffer,
        )
        yield from self.events.collect()
        yield from self._broker()
        for name, (value, help_text) in sorted(self.cluster.items()):
            yield GaugeMetricFamily(name, help_text, value=value)

    def _broker(self) -> Iterable[Metric]:
        broker = self.server.broker
        if broker is None:
            return
        up = GaugeMetricFamily(
            "im_broker_up", "1 while the broker reaches its backing service.", labels=["broker"]
        )
        up.add_metric([broker.name], 1 if broker.healthy() else 0)
        yield up
        trips = dict(broker.round_trips())
        seconds = HistogramMetricFamily(
            "im_broker_round_trip_seconds",
            "Calls to the broker's backing service (peer_*: requests to other nodes), "
            "by operation, failed ones included.",
            labels=["broker", "op"],
        )
        errors = CounterMetricFamily(
            "im_broker_errors",
            "Calls to the broker that failed (unreachable or over --broker-timeout).",
            labels=["broker", "op"],
        )
        for op, stats in sorted(trips.items()):
            histogram(seconds, [broker.name, op], stats.seconds)
            errors.add_metric([broker.name, op], stats.errors)
        yield seconds
        yield errors


class ProcessMetrics(Collector):
    """CPU, memory and the descriptor limit of the process, under the names of
    ``prometheus_client``'s process collector, which also counts open descriptors
    by listing ``/proc/self/fd``: 5 ms at 10,000 connections, in the event loop,
    at every scrape (``im_connections`` counts the sockets that matter)."""

    def __init__(self) -> None:
        self.started = time.time()

    def collect(self) -> Iterable[Metric]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        yield CounterMetricFamily(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            value=usage.ru_utime + usage.ru_stime,
        )
        rss = _resident_bytes()
        if rss is not None:
            yield GaugeMetricFamily(
                "process_resident_memory_bytes", "Resident memory size in bytes.", value=rss
            )
        yield GaugeMetricFamily(
            "process_max_fds",
            "Maximum number of open file descriptors.",
            value=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        )
        yield GaugeMetricFamily(
            "process_start_time_seconds",
            "When the metrics plugin started, in seconds since the epoch (about the "
            "process start).",
            value=self.started,
        )


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None  # not Linux


class Events:
    """Low-rate events counted from hooks, exported by the collector."""

    def __init__(self) -> None:
        self.refusals: dict[str, int] = {}
        # Known label values start at 0, so a rate over them exists before the first.
        self.disconnects = {(str(code), close_class(code)): 0 for code in CLOSE_CLASSES}
        self.acks = {("acked", ""): 0, ("expired", "max_tries"): 0, ("expired", "offline"): 0}

    def collect(self) -> Iterable[Metric]:
        refusals = CounterMetricFamily(
            "im_refusals",
            "Connection attempts refused at admission (the validate hook or the "
            "identity limits), by HTTP status.",
            labels=["status"],
        )
        for status, n in sorted(self.refusals.items()):
            refusals.add_metric([status], n)
        yield refusals
        disconnects = CounterMetricFamily(
            "im_disconnects",
            "Client connections closed, by close code and its class, as the log names "
            "it (4001: slow_consumer; codes im does not name: other).",
            labels=["code", "class"],
        )
        for (code, kind), n in sorted(self.disconnects.items()):
            disconnects.add_metric([code, kind], n)
        yield disconnects
        acks = CounterMetricFamily(
            "im_acks",
            "Ack receipts tracked on this node that ended: acked, or expired by reason "
            "(max_tries, offline).",
            labels=["outcome", "reason"],
        )
        for (outcome, reason), n in sorted(self.acks.items()):
            acks.add_metric([outcome, reason], n)
        yield acks


def count(counts: dict[Any, int], key: Any) -> None:
    counts[key] = counts.get(key, 0) + 1


class Exporter:
    """One node's registry: its counters and events, and the process collector."""

    def __init__(self, server: ServerAPI) -> None:
        self.server = server
        self.events = Events()
        self.collector = NodeCollector(server, self.events)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self.registry.register(ProcessMetrics())
        self._cluster_at = float("-inf")

    async def refresh(self) -> None:
        """Read the cluster-wide numbers (broker round trips), at most once per
        ``CLUSTER_EVERY``; while the broker cannot answer they are left out."""
        now = time.monotonic()
        if now - self._cluster_at < CLUSTER_EVERY:
            return
        self._cluster_at = now
        try:
            stats = await self.server.stats()
            nodes = await self.server.nodes()
        except ImError:
            self.collector.cluster = {}
            return
        self.collector.cluster = {
            "im_online_users": (stats.online, "Users online in the cluster (any node)."),
            "im_unacked_messages": (stats.unacked, "Pushes this node waits for an ack of."),
            "im_cluster_nodes": (len(nodes), "Live nodes of the cluster, this one included."),
        }

    async def handle(self, request: web.Request) -> web.Response:
        await self.refresh()
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )


_exporters: weakref.WeakKeyDictionary[Any, Exporter] = weakref.WeakKeyDictionary()


def exporter(server: ServerAPI) -> Exporter:
    """The node's exporter, made on first use (a hook may fire before the route is built)."""
    found = _exporters.get(server)
    if found is None:
        found = _exporters[server] = Exporter(server)
    return found


@hookimpl
def im_http_routes(add_get: Callable[[str, Handler], None], server: ServerAPI) -> None:
    add_get(PATH, exporter(server).handle)


@hookimpl
def im_validate_failed(server: ServerAPI, reject: Reject) -> None:
    count(exporter(server).events.refusals, str(int(reject.status)))


@hookimpl
def im_disconnected(server: ServerAPI, code: int) -> None:
    key = (str(code), close_class(code)) if code in KNOWN_CODES else ("other", "other")
    count(exporter(server).events.disconnects, key)


@hookimpl
def im_acked(server: ServerAPI) -> None:
    count(exporter(server).events.acks, ("acked", ""))


@hookimpl
def im_ack_expired(server: ServerAPI, reason: str) -> None:
    count(exporter(server).events.acks, ("expired", reason))
