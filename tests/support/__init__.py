"""Helpers shared by the test suites: server processes, a raw protocol client."""
