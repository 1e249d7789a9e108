"""Tests of durability on a real store (SQLite file or a ``redis-server`` with AOF).

End to end: real ``trackin serve`` processes, killed, restarted, fenced, evicted and starved of their
store (test_crash, test_restart, test_fencing, test_eviction, test_corrupt, test_store_faults). In process:
one part of ``service/durability`` at a time, built by `tests.persistence.parts` around a real engine and
scheduler (test_health, test_log, test_checkpointer, test_residency, test_restorer, test_loop), and the log
payload format (test_replay).
"""
