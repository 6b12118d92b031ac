"""What the realtime core counts, and how ``/metrics`` exports it.

Counters are bumped on the hot path as plain integers; the Prometheus
families are built from them at scrape time by a collector, so a frame sent
costs an addition, not a metrics-library call. Open connections are counted
once for every wire (websocket, SSE, Trigger.dev long-polls and streams),
keyed by ``(channel, transport)``: that one count is what the per-user and
per-process limits compare against. The Trigger.dev feeds keep their own
outcome counters besides, because the SDK reports nothing to anyone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

#: the transports of the Trigger.dev feeds: the Electric long-poll and the SSE stream
TRIGGER_POLL = "trigger_poll"
TRIGGER_SSE = "trigger_sse"
TRIGGER_TRANSPORTS = frozenset({TRIGGER_POLL, TRIGGER_SSE})


@dataclass(slots=True)
class RealtimeStats:
    """Counters and gauges a metrics collector (or a test) reads; updated on the hot path."""

    open: dict[tuple[str, str], int] = field(default_factory=dict)  # (channel, transport)
    opened: dict[tuple[str, str], int] = field(default_factory=dict)
    by_user: dict[str, int] = field(default_factory=dict)
    refused: dict[int, int] = field(default_factory=dict)  # HTTP status
    closes: dict[int, int] = field(default_factory=dict)  # close code sent
    frames_sent: int = 0
    resumed: int = 0
    compact_starts: int = 0
    resyncs: int = 0
    too_slow: int = 0
    lag_fallbacks: int = 0
    #: caught-up subscribers that joined their key's fanout
    joined: int = 0
    #: subscribers handed back from a fanout to their own (catch-up) path: they fell behind
    detached: int = 0

    @property
    def connections(self) -> int:
        """Every realtime connection held open, on any wire."""
        return sum(self.open.values())

    @property
    def trigger_connections(self) -> int:
        return sum(n for (_, transport), n in self.open.items() if transport in TRIGGER_TRANSPORTS)

    def count_close(self, code: int) -> None:
        self.closes[code] = self.closes.get(code, 0) + 1


@dataclass(slots=True)
class TriggerStats:
    """Counters for operators and tests: what the SDK never tells anyone."""

    snapshots: int = 0
    polls_changed: int = 0
    polls_idle: int = 0
    streams_opened: int = 0
    streams_resumed: int = 0
    streams_completed: int = 0
    streams_dropped: int = 0
    frames_sent: int = 0
    refused: dict[int, int] = field(default_factory=dict)


class RealtimeCollector(Collector):
    def __init__(self, stats: RealtimeStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self.stats
        open_ = GaugeMetricFamily(
            "sessionstream_realtime_connections",
            "Realtime connections held open, on every wire",
            labels=["channel", "transport"],
        )
        opened = CounterMetricFamily(
            "sessionstream_realtime_opened",
            "Realtime connections opened",
            labels=["channel", "transport"],
        )
        for (channel, transport), count in sorted(stats.open.items()):
            open_.add_metric([channel, transport], count)
        for (channel, transport), count in sorted(stats.opened.items()):
            opened.add_metric([channel, transport], count)
        yield open_
        yield opened
        yield CounterMetricFamily(
            "sessionstream_realtime_frames", "Frames sent", value=stats.frames_sent
        )
        refused = CounterMetricFamily(
            "sessionstream_realtime_refused", "Channels refused, by HTTP status", labels=["status"]
        )
        for status, count in sorted(stats.refused.items()):
            refused.add_metric([str(status)], count)
        yield refused
        closes = CounterMetricFamily(
            "sessionstream_realtime_closes", "Close codes sent", labels=["code"]
        )
        for code, count in sorted(stats.closes.items()):
            closes.add_metric([str(code)], count)
        yield closes
        yield CounterMetricFamily(
            "sessionstream_realtime_too_slow",
            "Clients cut off because they stopped reading",
            value=stats.too_slow,
        )
        yield CounterMetricFamily(
            "sessionstream_realtime_fanout_joined",
            "Caught-up websockets handed to their run's or session's shared fanout",
            value=stats.joined,
        )
        yield CounterMetricFamily(
            "sessionstream_realtime_fanout_detached",
            "Websockets handed back from a fanout to their own subscription (fell behind)",
            value=stats.detached,
        )
        yield CounterMetricFamily(
            "sessionstream_realtime_lag_fallbacks",
            "Live subscriptions whose buffer overflowed, sent back to reading the store",
            value=stats.lag_fallbacks,
        )


class TriggerCollector(Collector):
    def __init__(self, stats: TriggerStats, connections: RealtimeStats) -> None:
        self.stats = stats
        self.connections = connections

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self.stats
        yield GaugeMetricFamily(
            "sessionstream_trigger_connections",
            "Trigger.dev-protocol long-polls and streams held open",
            value=self.connections.trigger_connections,
        )
        yield CounterMetricFamily(
            "sessionstream_trigger_frames", "SSE frames sent", value=stats.frames_sent
        )
        streams = CounterMetricFamily(
            "sessionstream_trigger_streams", "SSE streams by outcome", labels=["outcome"]
        )
        streams.add_metric(["completed"], stats.streams_completed)
        streams.add_metric(["dropped"], stats.streams_dropped)
        yield streams
        refused = CounterMetricFamily(
            "sessionstream_trigger_refused", "Requests refused for their token", labels=["status"]
        )
        for status, count in sorted(stats.refused.items()):
            refused.add_metric([str(status)], count)
        yield refused
