"""Service configuration: one validated pydantic-settings class, from ``TRACKIN_*`` variables and flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ByteSize, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Everything the service can be told; defaults run it alone on one machine with an embedded store."""

    model_config = SettingsConfigDict(env_prefix="TRACKIN_", extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    data_dir: Path = Path("data")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    torch_threads: int = Field(default=1, ge=1, le=256)
    """Intra-op threads for the engine: torch's, and the fused kernels', which step a big batch as runs of
    distinct streams on that many threads (models/kernel_threads.py). One is fastest on two cores, where
    the event loop needs the other; more pays where cores are idle under batched load (docs/engine.md)."""
    gil_switch_interval_ms: float = Field(default=0.2, gt=0, le=100)
    """How long a thread may keep the GIL while another waits for it (CPython's default: 5 ms); short, so
    the engine thread is not kept waiting by the event loop between kernel calls (service/threads.py)."""
    gc_young_threshold: int = Field(default=10_000, ge=100, le=10_000_000)
    """Container objects allocated (net of those freed) between young-generation garbage collections.
    CPython's 700 set off several collections per batched request, each scanning the request's live
    objects; at 10,000 a request's objects are freed by reference counting first (service/garbage.py)."""
    kernels: Literal["auto", "torch"] = "auto"
    """``auto``: fused CPU kernels (numba) where they apply, compiled at start-up; ``torch``: the torch
    rounds everywhere (docs/engine.md, "Fused kernels")."""

    # Stores (the checkpoint issue): Redis when a URL is given, else SQLite in data_dir; "memory" keeps none.
    redis_url: str | None = None
    store: Literal["auto", "sqlite", "redis", "memory"] = "auto"
    durability: Literal["log", "checkpoint"] = "log"
    log_float32: bool = True
    """Log float32 streams' observations as float32, what they step on (format 4: replay stays exact, 40 %
    less to store). ``false`` writes format 3, which earlier versions read too: set it before going back to
    one, or while servers of both share a store."""
    checkpoint_every_steps: int = Field(default=1000, ge=1)
    checkpoint_interval_seconds: float = Field(default=5.0, gt=0)
    max_resident_streams: int | None = Field(default=None, ge=1)
    restore_eagerly: bool = False
    store_timeout_seconds: float = Field(default=2.0, gt=0)

    # Ingestion limits.
    max_batch_observations: int = Field(default=4096, ge=1)
    max_request_observations: int = Field(default=10_000, ge=1)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_ws_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_ws_in_flight: int = Field(default=256, ge=1)
    """Messages a WebSocket connection may have read and not answered; past it the server stops reading."""
    max_ws_in_flight_bytes: int = Field(default=64 * 2**20, ge=1024)
    """What those messages may weigh together (their frames' bytes); past it the server stops reading."""
    pending_label_ttl_seconds: float = Field(default=300.0, gt=0)
    max_pending_labels: int = Field(default=100_000, ge=1)
    max_pending_label_bytes: int = Field(default=64 * 2**20, ge=1)
    template_sweep_seconds: float = Field(default=1.0, gt=0)

    # Memory (docs/architecture.md, "Memory"): what a spec holds is computed before anything is allocated.
    max_stream_bytes: ByteSize = Field(default=ByteSize(256 * 2**20), ge=1)
    """Largest state one stream may hold (parameters, optimizer state, figures); bigger specs get a 422."""
    memory_budget: ByteSize | Literal["auto", "off"] = "auto"
    """Bytes all streams' state may take (e.g. ``1.5GiB``); ``auto``: half of the memory this process may
    use (its cgroup's limit, else the machine's). A stream over it gets a 507."""
    shutdown_timeout_seconds: float = Field(default=30.0, gt=0)

    # Connections (service/connections.py).
    header_timeout_seconds: float = Field(default=10.0, gt=0)
    """A connection that has not completed a request's headers this long after it began is closed."""
    body_timeout_seconds: float = Field(default=10.0, gt=0)
    """A connection that has not completed a request's body this long after its headers is closed."""
    keep_alive_seconds: int = Field(default=5, ge=1)
    """An idle keep-alive connection is closed after this long."""
    max_connections: int = Field(default=4096, ge=1)
    """Connections and requests in flight; beyond it new requests get a 503 (uvicorn's limit_concurrency)."""

    # Metrics.
    metrics_max_stream_series: int = Field(default=100, ge=0)
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    """Also serve ``/metrics`` on this port, without API keys, for scrapers that cannot send one (keep the
    port private: service/transport/metrics_port.py). The main port's ``/metrics`` needs an admin key."""

    # Security (README, "Security model"; service/security/).
    insecure: bool = False
    """Serve without API keys on an address other than loopback (otherwise the service refuses to start)."""
    bootstrap_admin_key: SecretStr | None = None
    """An admin key of the ``default`` tenant (32+ characters), stored hashed at start if absent: how compose
    and k8s provision the first key from a secret."""
    bootstrap_admin_key_file: Path | None = None
    """A file holding ``bootstrap_admin_key`` (a mounted secret); the key wins if both are set."""
    key_refresh_seconds: float = Field(default=1.0, gt=0, le=60)
    """How often the keys are re-read from the store: a revoked key stops working within this long."""
    allowed_origins: list[str] = []
    """Browser origins (``https://app.example``) allowed to open the WebSocket; requests without an Origin
    header (non-browser clients) are always allowed."""
    rate_limit_per_key: str | None = Field(default=None, pattern=r"^\d+\s*(/|per)\s*\d*\s*[a-z]+$")
    """Requests per API key, in ``limits`` notation (``200/second``); None: unlimited."""
    tenant_observations_rate: str | None = Field(default=None, pattern=r"^\d+\s*(/|per)\s*\d*\s*[a-z]+$")
    """Observations per tenant (``10000/second``); None: unlimited."""
    tenant_max_streams: int | None = Field(default=None, ge=1)
    """Streams one tenant other than ``default`` may hold; None: unlimited."""
    tenant_max_bytes: ByteSize | None = Field(default=None, ge=1)
    """State bytes (as the memory budget counts them) one tenant other than ``default`` may hold."""

    def bootstrap_key(self) -> str | None:
        if self.bootstrap_admin_key is not None:
            return self.bootstrap_admin_key.get_secret_value().strip()
        if self.bootstrap_admin_key_file is not None:
            return self.bootstrap_admin_key_file.read_text().strip()
        return None

    # Cluster mode (docs/scale-out.md): opt-in; replicas share the streams through NATS JetStream and Redis.
    cluster_nats_url: str | None = None
    """Set to run as one replica of a cluster (needs ``redis_url`` for the checkpoints)."""
    cluster_partitions: int = Field(default=32, ge=1, le=4096)
    """Streams are spread over this many partitions; fixed for the life of a cluster."""
    cluster_lease_ttl_seconds: float = Field(default=6.0, ge=0.5, le=300)
    """A dead replica's partitions move after at most this long; renewed every quarter of it."""
    cluster_replica_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    """This replica's name in the cluster (default: host name and process id)."""
    cluster_advertise_url: str | None = None
    """The URL other replicas and owner-aware clients reach this one at (default: from host and port)."""
    cluster_forward_timeout_seconds: float = Field(default=10.0, gt=0)
    """How long a replica waits for the owner's answer to a logged write before answering 202."""
    cluster_log_retention_seconds: float = Field(default=60.0, ge=0)
    """Each partition's log is trimmed behind its checkpoints, but keeps the messages of this many last
    seconds (at least the forward timeout plus 3 s: a front may look a stored write up that long)."""
