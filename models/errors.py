"""The project's error base, in the lowest layer and free of heavy imports.

Every area raises its own domain errors (``CheckpointError``, ``IndexerError``, ``DatasetError``,
...), each a subclass of :class:`SbirError` whose message is one line naming the file, key or field
at fault. They are turned into something else exactly twice: ``service.cli.main`` prints them as
one line with exit status 2, and the service's error handlers (``service/errors.py``) choose their
HTTP status. Nothing below the service raises an HTTP error.
"""

from __future__ import annotations


class SbirError(Exception):
    """A mistake of the person or the data in front of us (not a bug): shown as one line."""


class CliError(SbirError):
    """A command-line usage error found by a command handler itself."""
