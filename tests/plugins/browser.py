"""Fixtures for browser tests (see tests/conftest.py)."""
