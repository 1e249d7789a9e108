"""trackin's HTTP service."""
