"""Request checks: what the API accepts, and a one-line 4xx for everything it does not.

A body larger than the limit is refused while it streams in (never buffered whole), images are decoded with the
data layer's checks (`load_rgb`: Pillow's pixel limit before decoding, truncated or non-image data), and every
refusal is a `RequestError` carrying its HTTP status, which the app answers as `{"error": "one line"}`.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from plantlib.data import DecodedImageCache
from plantlib.data.images import ImageDecodeError
from plantlib.errors import PlantlibError
from plantlib.io import atomic_write
from plantlib.serving.model import ServedModel

RAW_TYPES_BESIDES_IMAGE = ("application/octet-stream",)  # what curl --data-binary and many clients send
MULTIPART = "multipart/form-data"
MAX_NAME_CHARS = 80


class RequestError(PlantlibError):
    """A request the API refuses; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """Per request: total body bytes and images. The pixel limit is the data layer's (Pillow's MAX_IMAGE_PIXELS)."""

    max_body_bytes: int = 16 * 2**20
    max_files: int = 32


@dataclass(frozen=True)
class Upload:
    """One image as received: the client's name for it (for messages) and its bytes."""

    name: str
    data: bytes


async def read_uploads(request: Request, limits: Limits) -> list[Upload]:
    """The images in a request: a multipart form's files, or a raw body with an image content type."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise RequestError(413, _too_large(int(declared), limits))
    if content_type != MULTIPART and not _is_image_type(content_type):
        shown = content_type or "none"
        raise RequestError(
            415, f"content type {shown!r} is not accepted; send multipart/form-data files or an image/* body"
        )
    body = await read_body(request.stream(), limits)
    if not body:
        raise RequestError(400, "empty request body; send an image (image/* body) or a multipart form with files")
    if content_type != MULTIPART:
        return [Upload("body", body)]
    return await _form_uploads(request.headers, body, limits)


async def read_body(stream: AsyncIterator[bytes], limits: Limits) -> bytes:
    """The whole body, refused as soon as it passes the byte limit (a missing Content-Length is no way around it)."""
    chunks, size = [], 0
    async for chunk in stream:
        size += len(chunk)
        if size > limits.max_body_bytes:
            raise RequestError(413, _too_large(size, limits))
        chunks.append(chunk)
    return b"".join(chunks)


async def _form_uploads(headers: Headers, body: bytes, limits: Limits) -> list[Upload]:
    async def replay() -> AsyncIterator[bytes]:
        yield body

    try:
        form = await MultiPartParser(headers, replay(), max_files=10 * limits.max_files, max_fields=100).parse()
    except MultiPartException as error:
        raise RequestError(400, f"malformed multipart body: {error.message}") from None
    files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
    if not files:
        raise RequestError(400, "the form holds no file; upload images in the 'files' field")
    if len(files) > limits.max_files:
        raise RequestError(413, f"too many images ({len(files)}); send at most {limits.max_files} per request")
    uploads = []
    for file in files:
        name = display_name(file.filename or "upload")
        part_type = (file.content_type or "").split(";")[0].strip().lower()
        if part_type and not _is_image_type(part_type):
            raise RequestError(415, f"{name}: content type {part_type!r} is not an image; upload image files")
        uploads.append(Upload(name, await file.read()))
    return uploads


def prepare_uploads(model: ServedModel, uploads: list[Upload], folder: Path) -> tuple[list[Path], DecodedImageCache]:
    """Decode and check every upload (written under `folder` for the decoder), returning the files and their cache.

    Runs in a worker thread: decoding is the request's own work, the inference thread only runs batches.
    """
    cache = model.image_cache()
    files = []
    for number, upload in enumerate(uploads):
        if not upload.data:
            raise RequestError(400, f"{upload.name} is empty (0 bytes); send the image's bytes")
        path = Path(folder) / f"{number}.upload"
        atomic_write(path, lambda handle, data=upload.data: handle.write(data), mode="wb")
        try:
            cache.get(path)
        except ImageDecodeError as error:
            raise _decode_refusal(upload.name, error) from None
        files.append(path)
    return files, cache


def crops(model: ServedModel, files: list[Path], cache: DecodedImageCache) -> list[torch.Tensor]:
    """The network's input for each decoded file (the same crop `plantlib predict` makes)."""
    return [model.prepare(path, cache) for path in files]


def upload_folder() -> tempfile.TemporaryDirectory:
    """A private folder for one request's uploads, deleted with the request."""
    return tempfile.TemporaryDirectory(prefix="plantlib-serve-")


def display_name(name: str) -> str:
    """A client's file name as one short printable line (it goes into messages and JSON, never into paths)."""
    visible = "".join(c if c.isprintable() else "?" for c in Path(name.replace("\\", "/")).name)
    return visible[:MAX_NAME_CHARS] or "upload"


def _decode_refusal(name: str, error: ImageDecodeError) -> RequestError:
    if isinstance(error.__cause__, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return RequestError(
            413, f"{name}: more pixels than the limit of {Image.MAX_IMAGE_PIXELS}; send a smaller image"
        )
    return RequestError(422, f"{name}: {error}".splitlines()[0])


def _is_image_type(content_type: str) -> bool:
    return content_type.startswith("image/") or content_type in RAW_TYPES_BESIDES_IMAGE


def _too_large(size: int, limits: Limits) -> str:
    return (
        f"request body of {size} bytes is over the limit of {limits.max_body_bytes} bytes; send fewer or smaller images"
    )
