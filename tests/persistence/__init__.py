"""End-to-end tests of persistence: real ``trackin serve`` processes on a real store (SQLite file or a
``redis-server`` with AOF), killed, restarted, fenced, evicted and starved of their store."""
