"""``trackin replay``: stream a file of ticks, bars or boxes through trackin, scored against baselines."""
