"""Tests of service.store: one contract suite over every backend, plus codec and fault tests."""
