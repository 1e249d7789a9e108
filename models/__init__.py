"""trackin's learning core: the TrackIn optimizer, model families and the batched multi-stream engine."""

from trackin.models.specs import StreamSpec
from trackin.models.trackin import TrackIn

__all__ = ["StreamSpec", "TrackIn"]
