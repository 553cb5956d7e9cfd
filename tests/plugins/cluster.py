"""Fixtures for cluster tests (see tests/conftest.py)."""
