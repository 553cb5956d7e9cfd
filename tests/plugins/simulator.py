"""Fixtures for simulator tests (see tests/conftest.py)."""
