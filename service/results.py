"""Search hits as the API and `sbir search` show them: rank, id, the gallery's key, the photo's path
relative to its gallery root (unless the server hides paths), label, metadata and scores."""

from __future__ import annotations

from service.api.schemas import SearchResult
from service.engine import SearchOutcome


def search_results(outcome: SearchOutcome, *, show_paths: bool) -> list[SearchResult]:
    """The results of a search, best first; `path` is None when `show_paths` is off."""
    results = []
    for rank, hit in enumerate(outcome.hits, start=1):
        record = outcome.records[hit.image_id]
        results.append(SearchResult(
            rank=rank, image_id=hit.image_id, key=record.key,
            path=outcome.paths.get(hit.image_id) if show_paths else None, label=record.label,
            metadata=dict(record.metadata or {}), ann_score=hit.ann_score, relation_score=hit.relation_score,
            score=hit.score,
            image_url=f"/images/{hit.image_id}",
        ))
    return results
