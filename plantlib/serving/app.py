"""The HTTP API of a served model (FastAPI): `POST /predict`, `GET /health`, `GET /model`, `/docs` and a page at `/`.

The model loads in the background after the server starts, so `/health` answers "loading" (503) until it is
ready. Every refusal or failure is JSON `{"error": "one line"}` with a 4xx or 5xx status, never a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from plantlib import __version__
from plantlib.errors import PlantlibError
from plantlib.serving.batching import BatchSettings, InferenceFailed, MicroBatcher, ServerBusy
from plantlib.serving.model import (
    EXPLAIN_NEEDS_CHECKPOINT,
    ExplainUnavailable,
    ServedModel,
    headline_metrics,
    open_model,
)
from plantlib.serving.validation import (
    Limits,
    RequestError,
    Upload,
    crops,
    prepare_uploads,
    read_uploads,
    upload_folder,
)

STATIC_DIR = Path(__file__).resolve().parent / "static"
SETTINGS_VARIABLE = "PLANTLIB_SERVE_SETTINGS"  # how `plantlib serve --workers N` hands settings to each worker
LOG = logging.getLogger("plantlib.serving")
ERROR_STATUS = {ExplainUnavailable: 400, ServerBusy: 503, InferenceFailed: 500}
PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@dataclass(frozen=True)
class ServeSettings:
    """Everything `create_app` needs, also as JSON for uvicorn's worker processes."""

    source: str
    engine: str = "auto"
    name: str | None = None
    version: str | None = None
    threads: int | None = None  # torch/OpenVINO threads for this process (None: all cores); for several workers
    limits: Limits = field(default_factory=Limits)
    batching: BatchSettings = field(default_factory=BatchSettings)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeSettings:
        values = json.loads(text)
        return cls(**{**values, "limits": Limits(**values["limits"]), "batching": BatchSettings(**values["batching"])})


@dataclass
class ModelSlot:
    """The model once loaded, or why loading failed; None and None while it loads."""

    model: ServedModel | None = None
    error: str | None = None

    def ready(self) -> ServedModel:
        if self.model is not None:
            return self.model
        if self.error is not None:
            raise ServerBusy(f"the model failed to load: {self.error}")
        raise ServerBusy("the model is still loading; retry when GET /health says ready")


def create_app(settings: ServeSettings) -> FastAPI:
    """The app serving `settings.source`; the model loads in the background once the server runs."""
    slot = ModelSlot()
    batcher = MicroBatcher(lambda images, tta: slot.ready().probabilities(images, tta), settings.batching)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        batcher.start()
        with ExitStack() as stack:
            loading = asyncio.create_task(_load(slot, batcher, settings, stack))
            yield
            loading.cancel()
            await batcher.stop()

    app = FastAPI(
        title="plantlib model server",
        version=__version__,
        description="Class probabilities (and optional Grad-CAM heat maps) for uploaded images.",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's own /docs and /redoc load their scripts from a CDN: `_add_offline_docs` instead
        redoc_url=None,
    )
    _add_error_handlers(app)
    _add_offline_docs(app)
    # Decoding gets one thread per core: more only queue for the GIL and the cores the engine needs.
    decoders = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="plantlib-decode")
    _add_routes(app, slot, batcher, settings.limits, decoders)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _add_offline_docs(app: FastAPI) -> None:
    """`/docs`: the Swagger UI page with its script and style served by this app (the `swagger-ui-bundle` package),
    so the page works offline and the browser contacts no other host."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Any:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="plantlib model server · API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},  # no spec validation by swagger.io's server
        )


def app_from_environment() -> FastAPI:
    """The app for one of uvicorn's worker processes, from the settings `plantlib serve` put in the environment."""
    text = os.environ.get(SETTINGS_VARIABLE)
    if not text:
        raise PlantlibError(f"${SETTINGS_VARIABLE} is not set; start the server with `plantlib serve MODEL`")
    return create_app(ServeSettings.from_json(text))


async def _load(slot: ModelSlot, batcher: MicroBatcher, settings: ServeSettings, stack: ExitStack) -> None:
    """Load the model on the inference thread; afterwards image preprocessing uses one torch thread per request
    when another runtime does the forward pass (the engine keeps the cores)."""
    source = Path(settings.source)
    if settings.threads:
        torch.set_num_threads(settings.threads)  # before compiling: OpenVINO takes torch's thread count
    try:
        model = await batcher.call(open_model, source, settings.engine, settings.name, settings.version)
    except Exception as error:  # reported by /health and every /predict; the server stays up to say so
        slot.error = f"{type(error).__name__}: {error}".splitlines()[0]
        LOG.error("plantlib serve: cannot load %s: %s", source, slot.error)
        return
    if model.info.engine != "torch":
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        stack.callback(torch.set_num_threads, previous)
    slot.model = model
    LOG.warning("plantlib serve: %s (%s) ready on engine %s", model.info.name, model.info.version, model.info.engine)


def _add_routes(
    app: FastAPI, slot: ModelSlot, batcher: MicroBatcher, limits: Limits, decoders: ThreadPoolExecutor
) -> None:
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/health", summary="ready (200) once the model is loaded; loading or failed (503) before")
    async def health() -> JSONResponse:
        if slot.model is None:
            body = {"status": "failed" if slot.error else "loading", "error": slot.error}
            return JSONResponse(body, status_code=503)
        info = slot.model.info
        return JSONResponse({"status": "ready", "model": info.name, "version": info.version, **_batching(batcher)})

    @app.get("/model", summary="classes, preprocessing, test metrics with 95% intervals, model card")
    async def model() -> dict[str, Any]:
        info = slot.ready().info
        return {**asdict(info), "headline_metrics": headline_metrics(info.metrics), "limits": asdict(limits)}

    @app.post("/predict", summary="class probabilities for one or many images", openapi_extra=PREDICT_BODY)
    async def predict(request: Request, tta: bool = False, explain: bool = False) -> dict[str, Any]:
        served = slot.ready()
        if explain and not served.info.explains:
            raise ExplainUnavailable(EXPLAIN_NEEDS_CHECKPOINT)
        uploads = await read_uploads(request, limits)
        with upload_folder() as folder:
            decoding = asyncio.get_running_loop().run_in_executor(decoders, _decode, served, uploads, Path(folder))
            inputs, files, cache = await decoding
            probabilities = await batcher.predict(inputs, tta)
            overlays = [await batcher.call(served.overlay_png, file, cache) for file in files] if explain else None
        return _predictions(served, uploads, probabilities, overlays, tta)


def _decode(model: ServedModel, uploads: list[Upload], folder: Path) -> tuple[list[torch.Tensor], list[Path], Any]:
    files, cache = prepare_uploads(model, uploads, folder)
    return crops(model, files, cache), files, cache


def _predictions(
    model: ServedModel, uploads: list[Upload], probabilities: np.ndarray, overlays: list[bytes] | None, tta: bool
) -> dict[str, Any]:
    """The JSON answer: one entry per image, in upload order."""
    names = model.info.class_names
    results = []
    for index, (upload, row) in enumerate(zip(uploads, probabilities, strict=True)):
        best = int(np.argmax(row))
        entry: dict[str, Any] = {
            "file": upload.name,
            "predicted": names[best],
            "confidence": float(row[best]),
            "probabilities": {name: float(p) for name, p in zip(names, row, strict=True)},
        }
        if overlays is not None:
            entry["overlay_png"] = "data:image/png;base64," + base64.b64encode(overlays[index]).decode("ascii")
        results.append(entry)
    return {"model": {"name": model.info.name, "version": model.info.version}, "tta": tta, "predictions": results}


def _batching(batcher: MicroBatcher) -> dict[str, Any]:
    return {"batching": {**batcher.stats.as_dict(), "window_ms": batcher.settings.window_ms}}


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as `{"error": "one line"}`: refusals 4xx, overload 503, engine failures 500."""

    def answer(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": str(message).splitlines()[0] if message else "error"}, status_code=status)

    @app.exception_handler(RequestError)
    async def refused(request: Request, error: RequestError) -> JSONResponse:
        return answer(error.status, str(error))

    @app.exception_handler(PlantlibError)
    async def plantlib_error(request: Request, error: PlantlibError) -> JSONResponse:
        return answer(ERROR_STATUS.get(type(error), 400), str(error))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return answer(error.status_code, str(error.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return answer(422, f"{where}: {first.get('msg', 'invalid value')}")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        LOG.exception("plantlib serve: unexpected error on %s", request.url.path)
        return answer(500, f"internal error: {type(error).__name__}: {error}")
