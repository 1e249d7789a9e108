"""Helpers shared by test suites: real external processes, not mocks."""
