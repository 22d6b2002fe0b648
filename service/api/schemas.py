"""Request and response models of every endpoint."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field

from service.explain_kinds import Source
from service.jobs import Job
from training.datasets import DatasetName

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JobKind = Literal["index_build", "train", "evaluate"]
Retrieval = Literal["ret", "rn", "two-stage"]
TokenFormat = Literal["fp16", "int8", "rq", "none"]

# A folder name: no separators, no leading dot, so it cannot point anywhere but index_root/<name>.
INDEX_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# Characters of a FAISS index_factory string ("Flat", "HNSW32", "IVF256,PQ16x8", "OPQ16_64,IVF1024,PQ16").
FACTORY_PATTERN = r"^[A-Za-z0-9_,.=x-]{1,64}$"


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. upload_too_large")
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


# Search ------------------------------------------------------------------------------------


class SearchResult(BaseModel):
    rank: int = Field(description="1-based position in the final order")
    image_id: int
    key: str | None = Field(description="the gallery's own identifier: the manifest's id, else the path "
                                        "relative to the gallery root")
    path: str | None = Field(description="the photo's path relative to its gallery root (absolute when it lies "
                                         "outside it); null when the server hides paths (SBIR_SHOW_PATHS=false)")
    label: str | None
    metadata: dict[str, Any]
    ann_score: float = Field(description="inner product of the [Ret] embeddings from the ANN index")
    relation_score: float | None = Field(description="relation network score in (0, 1); null when not re-ranked")
    score: float = Field(description="what the results are ordered by: relation_score + SBIR_ANN_WEIGHT x "
                                     "ann_score when re-ranked, else ann_score")
    image_url: str


class SearchTimings(BaseModel):
    """Milliseconds spent in each stage (total includes reading the upload)."""

    decode: float
    embed: float
    ann: float
    rerank: float
    total: float


class IndexSummary(BaseModel):
    name: str
    size: int


class SearchResponse(BaseModel):
    query_id: str = Field(description="handle for GET /explain/{query_id}/{image_id} while it stays cached")
    reranked: bool
    shortlist: int = Field(description="ANN candidates considered")
    results: list[SearchResult]
    timings_ms: SearchTimings
    index: IndexSummary


# Explain -----------------------------------------------------------------------------------


class GridCell(BaseModel):
    row: int
    col: int


class MatchedPairPublic(BaseModel):
    sketch_cell: GridCell
    photo_cell: GridCell
    score: float = Field(description="cosine similarity of the two anchors")


# The bodies of GET /explain/{query_id}/{image_id} and of `sbir explain --format json`: what
# `service.explain.explain` computes. Field order is the JSON's key order.


class CorrespondenceExplanation(BaseModel):
    kind: Literal["correspondence"] = "correspondence"
    query_id: str | None
    image_id: int
    level: Literal["anchor", "token"] = Field(
        description="anchor: the 7x7 kernel the relation network scores (cells are feature-map positions); "
                    "token: cross-attention tokens on the 14x14 patch grid (cells are image regions)")
    grid: int = Field(description="side of the grid: cell i is divmod(i, grid)")
    box: list[float] | None = Field(description="the sketch region asked for, x0,y0,x1,y1 in 224x224 pixels")
    region: list[GridCell] | None = Field(description="sketch cells the box covers")
    pairs: list[MatchedPairPublic] = Field(description="each sketch cell's best photo cell, strongest first")
    kernel: list[list[float]] = Field(description="[C, C] cosines: kernel[i][j] = cos(sketch cell i, photo cell j)")


class AttentionSide(BaseModel):
    ret_self: list[float] = Field(description="[H] attention of [Ret] to itself, per head")
    maps: list[list[list[float]]] = Field(description="[H, G, G] attention of [Ret] to each patch; "
                                                      "with ret_self, each head sums to 1")
    mean: list[list[float]] = Field(description="[G, G] mean over heads")
    selections: list[list[list[bool]]] = Field(description="[L, G, G] tokens kept after each selection layer")


class AttentionExplanation(BaseModel):
    kind: Literal["attention"] = "attention"
    query_id: str | None
    image_id: int
    grid: int
    heads: int
    selection_layers: list[int] = Field(description="0-based blocks that selected tokens (empty: selection off)")
    sketch: AttentionSide
    photo: AttentionSide


class InfluentialPair(BaseModel):
    sketch_cell: GridCell
    photo_cell: GridCell
    cosine: float = Field(description="kernel entry of the pair")
    score_without: float = Field(description="relation score with the pair removed")
    drop_percent: float = Field(description="100 * (score - score_without) / score")


class InfluenceExplanation(BaseModel):
    kind: Literal["influence"] = "influence"
    query_id: str | None
    image_id: int
    grid: int = Field(description="side of the anchor grid (7)")
    relation_score: float
    removal: str = Field(description="what removing a pair means")
    pairs: list[InfluentialPair] = Field(description="the pairs whose removal lowers the score most, first")
    drop_percent: list[list[float]] = Field(description="[A, A] drop in percent for every pair")


class PatchMatch(BaseModel):
    image_id: int
    cell: GridCell
    score: float = Field(description="cosine of the sketch and photo patch tokens")


class PatchSource(BaseModel):
    cell: GridCell
    matches: list[PatchMatch] = Field(description="photo patches that replaced this sketch patch (empty: kept)")


class SynthesisExplanation(BaseModel):
    kind: Literal["synthesis"] = "synthesis"
    query_id: str | None
    image_id: int
    source: Source
    grid: int
    patch_size: int
    tokens: str
    photos: list[int] | None = Field(description="source=retrieved: the photos patches were taken from")
    k: int | None = Field(description="source=gallery: nearest patches averaged per sketch patch")
    patch_index: str | None = Field(default=None, description="source=gallery: the patch index's FAISS type")
    patches: list[PatchSource]


ExplanationBody = CorrespondenceExplanation | AttentionExplanation | InfluenceExplanation | SynthesisExplanation
AnyExplanation = Annotated[ExplanationBody, Field(discriminator="kind")]


# Jobs --------------------------------------------------------------------------------------


def _timestamp(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, tz=UTC)


class JobPublic(BaseModel):
    id: str
    kind: JobKind | str
    state: JobState
    progress: float = Field(ge=0.0, le=1.0)
    message: str
    params: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    log_tail: list[str]

    @classmethod
    def from_job(cls, job: Job, log_lines: int = 20) -> JobPublic:
        return cls(
            id=job.id, kind=job.kind, state=cast(JobState, job.state), progress=job.progress, message=job.message,
            params=job.params, result=job.result, error=job.error, created_at=datetime.fromtimestamp(job.created_at, tz=UTC),
            started_at=_timestamp(job.started_at), finished_at=_timestamp(job.finished_at),
            log_tail=job.log_tail(log_lines),
        )


class JobList(BaseModel):
    jobs: list[JobPublic]


# Indexes -----------------------------------------------------------------------------------


class IndexBuildCreate(BaseModel):
    """POST /index/build: the new index is written to <index root>/<name> with the served checkpoint."""

    model_config = ConfigDict(extra="forbid")

    gallery: str = Field(description="folder, CSV/JSONL manifest or split file under a data root")
    name: str = Field(pattern=INDEX_NAME_PATTERN, description="name of the new index directory")
    index_type: str | None = Field(None, pattern=FACTORY_PATTERN, description="FAISS factory string; default: by size")
    tokens: TokenFormat = "fp16"
    token_bytes: int = Field(32, ge=2, le=1024, description="with tokens=rq: bytes per token of the codes")
    activate: bool = Field(True, description="serve the new index as soon as it is built")


class IndexActivate(BaseModel):
    """POST /index/activate: serve <index root>/<name> from now on, and after restarts."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=INDEX_NAME_PATTERN, description="an index directory under the index root")


class IndexPublic(BaseModel):
    name: str
    size: int
    has_tokens: bool
    model: str
    checkpoint_hash: str
    manifest: dict[str, Any]


# Training and evaluation -------------------------------------------------------------------


class TrainCreate(BaseModel):
    """POST /train: a whole training config, as the YAML files under configs/ (validated before queueing).

    Paths in it (`run_dir`, `data.root`, `data.unseen`, `model.init_checkpoint`,
    `model.overrides.pretrained_file`) must lie under a data root; relative ones are taken from the
    first data root.
    """

    model_config = ConfigDict(extra="forbid")
    config: dict[str, Any] = Field(description="a training config: run_dir, seed, model, data, optim, ...")
    resume: bool = Field(False, description="continue from run_dir/checkpoints/last.pt")


class EvaluateCreate(BaseModel):
    """POST /evaluate: the same options as `sbir evaluate`."""

    model_config = ConfigDict(extra="forbid")
    dataset: DatasetName
    root: str = Field(description="dataset folder under a data root")
    checkpoint: str | None = Field(None, description="checkpoint to evaluate (default: the one being served)")
    retrieval: Retrieval = "ret"
    shortlist: int = Field(100, ge=1, le=100_000, description="K of the two-stage path")
    unseen: str | None = Field(None, description="file of unseen class names (generic layout), under a data root")
    quick: bool = Field(False, description="the reference's subsampled quick test")


# Health ------------------------------------------------------------------------------------


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    status: Literal["ready"] = "ready"
    model: str
    family: str
    device: str
    index: IndexSummary
