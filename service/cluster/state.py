"""What the cluster app's lifespan built, as the routes see it."""

from __future__ import annotations

from dataclasses import dataclass

from trackin.service.cluster.front import Front
from trackin.service.cluster.jetstream import Link
from trackin.service.cluster.labels import PendingInputs
from trackin.service.cluster.leases import Leases
from trackin.service.cluster.owner import Owner
from trackin.service.cluster.quotas import SharedQuotas
from trackin.service.cluster.templates import TemplateBook
from trackin.service.metrics import Metrics
from trackin.service.settings import Settings

__all__ = ["ClusterState"]


@dataclass
class ClusterState:
    settings: Settings
    metrics: Metrics
    link: Link
    leases: Leases
    owner: Owner
    front: Front
    templates: TemplateBook
    pending: PendingInputs
    quotas: SharedQuotas | None = None
    """Tenant quotas (streams, bytes), checked at the front before a creation is logged."""
    warmed: bool = False

    def checks(self) -> dict[str, str]:
        """Readiness: the kernels compiled, NATS connected, the lease loop ran, owned partitions serving."""
        held = self.owner.workers.values()
        return {
            "engine": "up" if self.warmed else "starting",
            "nats": "up" if self.link.nc.is_connected else "down",
            "leases": "up" if self.leases.ticked else "starting",
            "partitions": "up" if all(w.live for w in held) else "restoring",
        }
