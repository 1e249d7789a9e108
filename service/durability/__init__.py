"""Durability between the registry and a store: the log, checkpoints, bounded residency and restores."""
