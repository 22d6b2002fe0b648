"""GET /images/{image_id}: a gallery photo (or a thumbnail) by its id in the served index."""

from __future__ import annotations

import io
import mimetypes
from pathlib import Path as FilePath
from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import FileResponse, Response

from service.api.deps import EngineDep, SettingsDep
from service.api.schemas import ErrorResponse
from service.engine import lookup_record
from service.errors import InvalidParameterError, NotFoundError, StoredDataError

router = APIRouter(tags=["images"])

MAX_IMAGE_ID = 2**63 - 1  # ids are int64 in the index


@router.get(
    "/images/{image_id}",
    response_class=Response,
    responses={200: {"content": {"image/*": {}}}, 404: {"model": ErrorResponse}, 422: {"model": ErrorResponse},
               503: {"model": ErrorResponse}},
)
def get_image(
    image_id: Annotated[int, Path(ge=0, le=MAX_IMAGE_ID)],
    engine: EngineDep,
    settings: SettingsDep,
    size: Annotated[int | None, Query(ge=16, description="longest side of a JPEG thumbnail")] = None,
) -> Response:
    """The photo's file as stored; with `size`, a JPEG thumbnail whose longest side is at most `size`.

    Only ids of the served index resolve: the path comes from the index, never from the client.
    """
    if size is not None and size > settings.thumbnail_max:
        raise InvalidParameterError("validation_error",
                                    f"size: Input should be less than or equal to {settings.thumbnail_max}", field="size")
    with engine.lease() as lease:
        record = lookup_record(lease.index, image_id)
    path = FilePath(record.path)
    if not path.is_file():
        raise NotFoundError("image_file_missing", f"the file of image {image_id} is no longer on disk")
    headers = {"Cache-Control": "private, max-age=3600"}
    if size is None:
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media_type, headers=headers)
    return Response(_thumbnail(path, size, image_id), media_type="image/jpeg", headers=headers)


def _thumbnail(path: FilePath, size: int, image_id: int) -> bytes:
    from models.preprocess import load_rgb

    try:
        photo = load_rgb(path)
    except (OSError, SyntaxError, ValueError) as error:
        # The gallery file went bad after indexing: a server-side data problem, said plainly.
        raise StoredDataError("image_unreadable", f"the file of image {image_id} cannot be decoded") from error
    photo.thumbnail((size, size))
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()
