"""trackin's learning core: the TrackIn optimizer, model families and the batched multi-stream engine."""

from .specs import StreamSpec
from .trackin import TrackIn

__all__ = ["StreamSpec", "TrackIn"]
