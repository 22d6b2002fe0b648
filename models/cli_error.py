"""The command line's one error type, in the lowest layer and free of heavy imports, so that every
area's command handlers (models, indexer, training, service) raise it without importing the service."""

from __future__ import annotations


class CliError(Exception):
    """An error meant for the person at the terminal: printed as one line, exit status 2.

    Caught by ``service.cli.main``.
    """
