"""Turning an uploaded sketch into a PIL image without trusting it.

Order of checks, cheapest first: the request body size (middleware below, before the multipart
parser spools anything big), the file size, the format and pixel count read from the header, and
only then the decode. Every refusal is a domain error (`service.errors`): `TooLargeError`,
`UnsupportedMediaTypeError` or `InvalidInputError`.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import (
    CarriedServiceError,
    InvalidInputError,
    InvalidParameterError,
    TooLargeError,
    UnsupportedMediaTypeError,
    service_error_response,
)

# Formats a sketch may arrive in; anything else is refused as unsupported media.
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
# A sketch with fewer stroke pixels than this (or than it has pixels) is refused as blank: the crop to
# the ink finds nothing to keep, and any ranking of it would be noise dressed up as scores.
MIN_INK_PIXELS = 8
# Room for the multipart boundaries and headers around the file itself.
MULTIPART_OVERHEAD = 64 * 1024


def too_large(limit: int) -> TooLargeError:
    return TooLargeError("upload_too_large", f"the upload is larger than the limit of {limit} bytes")


class BodySizeLimitMiddleware:
    """Refuse request bodies over `max_body_bytes` with 413, without reading them whole.

    A declared Content-Length over the limit is answered at once; a chunked body is counted as it
    streams and cut off when it crosses the limit.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await service_error_response(too_large(self.max_body_bytes), {"Connection": "close"})(
                scope, receive, send
            )
            return

        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # FastAPI re-raises HTTPExceptions from body parsing (anything else becomes
                    # a 400), so the app's handler renders this; the except below covers the rest.
                    raise CarriedServiceError(too_large(self.max_body_bytes))
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except CarriedServiceError as carried:
            if response_started or not isinstance(carried.error, TooLargeError):
                raise
            await service_error_response(carried.error)(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def decode_sketch(data: bytes, *, max_pixels: int, shrink: bool = True) -> Image.Image:
    """Bytes of a PNG/JPEG/WebP -> a decoded PIL image (first frame) for `models.preprocess.sketch`.

    Images with a long side under `preprocess.SHRINK_FROM` (1792) px come back fully decoded, mode
    as stored. Larger ones (with `shrink`, the default) go through `preprocess.shrink_sketch` and
    come back as RGB: their ink crop, and when that crop is itself that large, the crop reduced to
    448 px keeping the darkest pixel of each block. Preprocessing then never copies `max_pixels`
    pixels to float (a 25 Mpx upload peaked at ~600 MB that way), and the full-size decode is freed
    when this returns. shrink=False: always the full decode (the benchmark's "before").

    Raises UnsupportedMediaTypeError: not an accepted image format; TooLargeError: more than
    `max_pixels` pixels (checked from the header, before any pixel is decoded); InvalidInputError:
    corrupt or truncated data.
    """
    try:
        with warnings.catch_warnings():
            # PIL warns (and past 2x its own limit raises) about bombs; our limit is checked below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as error:
        raise _too_many_pixels(max_pixels) from error
    except UnidentifiedImageError as error:
        raise UnsupportedMediaTypeError(
            "unsupported_media_type", "the sketch is not a PNG, JPEG or WebP image"
        ) from error
    except (OSError, SyntaxError, ValueError) as error:
        raise _undecodable(error) from error

    width, height = image.size
    if width <= 0 or height <= 0:
        raise InvalidInputError("undecodable_image", "the image has no pixels")
    if width * height > max_pixels:
        raise _too_many_pixels(max_pixels, width, height)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except Image.DecompressionBombError as error:
        raise _too_many_pixels(max_pixels, width, height) from error
    # Decoders report corrupt data with a zoo of exception types; all of them mean "bad input".
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, MemoryError) as error:
        raise _undecodable(error) from error
    if shrink:
        from models import preprocess  # torch: imported on the first decode, not with the app

        return preprocess.shrink_sketch(image)
    return image


def _too_many_pixels(max_pixels: int, width: int | None = None, height: int | None = None) -> TooLargeError:
    size = f" ({width}x{height})" if width is not None else ""
    return TooLargeError("too_many_pixels", f"the image{size} has more than the limit of {max_pixels} pixels")


def _undecodable(error: BaseException) -> InvalidInputError:
    return InvalidInputError("undecodable_image", f"the image cannot be decoded: {error}")


def require_ink(image: Image.Image) -> None:
    """InvalidParameterError (422 `blank_sketch`) for a blank or near-blank sketch: fewer than
    `MIN_INK_PIXELS` pixels dark enough to count as strokes (R+G+B <= preprocess.INK_THRESHOLD, after
    transparency is put on white paper), so that `preprocess.sketch` would find no ink to crop to."""
    import numpy as np

    from models import preprocess

    strokes = preprocess.ink_mask(np.asarray(preprocess.to_rgb(image), dtype=np.uint8))
    ink = int(np.count_nonzero(strokes))
    if ink < min(MIN_INK_PIXELS, strokes.size):
        raise InvalidParameterError(
            "blank_sketch",
            f"the sketch is blank: {ink} pixel(s) are dark enough to count as strokes (R+G+B <= "
            f"{preprocess.INK_THRESHOLD}; transparent counts as white), so there is no ink to crop to and "
            "search; draw with darker lines", field="sketch")
