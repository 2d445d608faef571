"""Back-pressure on /metrics: event-loop lag, paused connections, outboxes."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from node.stats import NodeView


def pressure_metrics(node: NodeView) -> Iterator[Metric]:
    h = node.loop_lag()
    yield HistogramMetricFamily(
        "gearmesh_event_loop_lag_seconds",
        "how late the event loop ran a timer due every 50 ms",
        buckets=[("+Inf" if b == float("inf") else repr(b), n) for b, n in h.cumulative()],
        sum_value=h.sum)
    flow = node.flow
    yield GaugeMetricFamily("gearmesh_paused_connections",
                            "submitting connections not read because the node is saturated",
                            value=flow.paused_connections)
    yield CounterMetricFamily("gearmesh_connection_pauses",
                              "times a submitting connection was paused", value=flow.pauses)
    yield CounterMetricFamily("gearmesh_saturations",
                              "times the node became saturated (store, outbox or loop)",
                              value=flow.saturations)
    reasons = GaugeMetricFamily("gearmesh_saturated",
                                "1 while this cause of saturation holds", labels=["cause"])
    for cause in ("store", "event loop"):
        reasons.add_metric([cause], 1 if cause in flow.reasons else 0)
    for cause in flow.reasons:
        if cause not in ("store", "event loop"):
            reasons.add_metric([cause], 1)
    yield reasons
    frames = GaugeMetricFamily("gearmesh_peer_outbox_frames",
                               "frames queued for a peer node", labels=["peer"])
    size = GaugeMetricFamily("gearmesh_peer_outbox_bytes",
                             "bytes queued for a peer node", labels=["peer"])
    for peer, (n, b) in sorted(node.peer_outboxes().items()):
        frames.add_metric([peer], n)
        size.add_metric([peer], b)
    yield frames
    yield size
