"""Kept only for tests/labserver.py until it imports ``nbcluster.testing.wait_until``; the
one polling helper lives in nbcluster.testing."""

from nbcluster.testing import wait_until  # noqa: F401
