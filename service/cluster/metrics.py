"""The cluster's Prometheus figures, read at scrape time from the lease loop and the owner."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["ClusterCollector", "ClusterFigures"]


class ClusterFigures:
    """What the collector reads; callables so that nothing is copied between scrapes."""

    def __init__(
        self,
        owned: Callable[[], int],
        live: Callable[[], int],
        without_owner: Callable[[], int],
        lease_changes: Callable[[], int],
        replay_lag: Callable[[], int],
        dead_letters: Callable[[], int],
        log_trims: Callable[[], int],
        swept: Callable[[], int],
    ) -> None:
        self.owned = owned
        self.live = live
        self.without_owner = without_owner
        self.lease_changes = lease_changes
        self.replay_lag = replay_lag
        self.dead_letters = dead_letters
        self.log_trims = log_trims
        self.swept = swept


class ClusterCollector(Collector):
    """``trackin_cluster_*``: partitions owned and serving, partitions without owner (as this replica
    sees the map), lease changes, replay lag (messages behind while restoring), dead letters (writes this
    replica could not apply), log trims (purges of its partitions' log behind their checkpoints) and streams
    swept (idle template-made streams a sweep message deleted)."""

    def __init__(self, figures: ClusterFigures) -> None:
        self._figures = figures

    def collect(self) -> Iterable[Metric]:
        f = self._figures
        yield GaugeMetricFamily(
            "trackin_cluster_partitions_owned", "Partitions whose lease this replica holds", value=f.owned()
        )
        yield GaugeMetricFamily(
            "trackin_cluster_partitions_live", "Owned partitions restored and caught up", value=f.live()
        )
        yield GaugeMetricFamily(
            "trackin_cluster_partitions_without_owner",
            "Partitions without a lease in the last map this replica read",
            value=f.without_owner(),
        )
        yield CounterMetricFamily(
            "trackin_cluster_lease_changes",
            "Leases taken, lost or released by this replica",
            value=f.lease_changes(),
        )
        yield GaugeMetricFamily(
            "trackin_cluster_replay_lag_messages",
            "Log messages the partitions being restored are still behind",
            value=f.replay_lag(),
        )
        yield CounterMetricFamily(
            "trackin_cluster_dead_letters",
            "Logged writes this replica could not apply, moved to the dead-letter stream",
            value=f.dead_letters(),
        )
        yield CounterMetricFamily(
            "trackin_cluster_log_trims",
            "Purges of owned partitions' log up to what their checkpoints cover",
            value=f.log_trims(),
        )
        yield CounterMetricFamily(
            "trackin_cluster_streams_swept",
            "Idle template-made streams deleted by a logged sweep on this replica's partitions",
            value=f.swept(),
        )
