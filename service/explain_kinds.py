"""The kinds of explanation and the synthesis sources: the one list of each, for the computation
(`service.explain`), the API (`service.api.schemas`, the /explain route) and `sbir explain`.

Standard library only, so that registering the `sbir explain` command stays cheap.
"""

from __future__ import annotations

from typing import Literal, get_args

Kind = Literal["correspondence", "attention", "influence", "synthesis"]
KINDS: tuple[Kind, ...] = get_args(Kind)

Source = Literal["retrieved", "gallery"]  # synthesis: patches of the top retrieved photos, or the patch index
SOURCES: tuple[Source, ...] = get_args(Source)
