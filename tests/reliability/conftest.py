"""Reliability and security tests reuse the service suite's real zse-tiny checkpoint and index."""

from tests.service.conftest import client, make_settings, served, workspace  # noqa: F401  (fixtures)
