"""Errors the indexer raises for problems a user can fix; each message is one line."""

from __future__ import annotations

from models.errors import SbirError


class IndexerError(SbirError):
    """A problem with the indexer's input or an index directory, meant to be shown as one line."""


class GalleryError(IndexerError):
    """The gallery argument cannot be read: missing path, empty gallery, malformed manifest or split file."""


class FactoryError(IndexerError):
    """The FAISS factory string cannot be built for this dimension or gallery size."""


class IndexMismatchError(IndexerError):
    """An index directory was built with another checkpoint (or another token layout) than the one at hand."""
