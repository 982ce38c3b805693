"""Fixtures of the end-to-end tests."""

from tests.e2e.browser import browser_workbench  # noqa: F401 (a fixture for the browser tests)
