"""HTTP API and web page for a classifier: FastAPI app with upload limits and micro-batching.

    app = create_app(resnetlab.predict.load("runs/trash"))
    uvicorn.run(app, host="127.0.0.1", port=8000)

Endpoints: `POST /predict` (multipart field `file`, or the raw image bytes as the body; `?topk=`) -> `[{label, score}]`,
`GET /health`, `GET /info`, `GET /openapi.json`, and the page at `/` (files under `static/`, no external assets).
Swagger UI at /docs is switched off: FastAPI loads it from a CDN, which fails offline and leaks requests; the schema
itself is served at /openapi.json.

Concurrent requests are decoded in a small thread pool and their tensors queued; one worker runs the model on up to
`max_batch` queued images at a time. The worker waits (at most `max_wait_ms`) for more images only while other
requests are still being decoded, so a lone request never waits and a burst shares one forward pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image, ImageOps
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from resnetlab.data.loader import stack_channels_last

STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD_MB = 10.0
DEFAULT_MAX_PIXELS = 40_000_000  # a 48 MP phone photo is ~48M; 40M decoded as RGB is ~120 MB of memory
DEFAULT_MAX_BATCH = 16
DEFAULT_MAX_WAIT_MS = 10.0
# Formats a browser or camera produces. Pillow can open more (EPS runs Ghostscript, for one): not from strangers.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO")
# An over-size body is read and dropped (up to this much) so the client can see the 413 instead of a reset socket.
DRAIN_LIMIT_BYTES = 256 * 2**20


class Prediction(BaseModel):
    label: str
    score: float


class ErrorMessage(BaseModel):
    detail: str


# -- decoding ----------------------------------------------------------------------------------------------------------


def decode_image(data: bytes, max_pixels: int, draft_size: int | None = None) -> Image.Image:
    """Upload bytes -> RGB image, EXIF orientation applied, exactly as `open_image` decodes files.

    Raises HTTPException 400 (empty, not an image, damaged) or 413 (more than `max_pixels`), checked from the header
    before any pixel is decoded.
    """
    from resnetlab.data.images import draft_request, to_rgb

    if not data:
        raise HTTPException(400, "empty upload: send an image file (multipart field 'file' or the raw bytes)")
    try:
        im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise HTTPException(413, f"image refused: {exc}") from exc
    except Exception as exc:  # UnidentifiedImageError, or a damaged header
        raise HTTPException(
            400, f"not an image (or an unsupported format; send {', '.join(ALLOWED_FORMATS[:6])})"
        ) from exc
    with im:
        w, h = im.size
        if w * h > max_pixels:
            raise HTTPException(413, f"image refused: {w}x{h} = {w * h} pixels is over this server's {max_pixels}")
        try:
            if draft_size and im.format == "JPEG":
                request = draft_request(im.size, draft_size)  # same reduced-size decode as `resnetlab predict`
                if request:
                    im.draft("RGB", request)
            im.load()
            im = ImageOps.exif_transpose(im) or im
            return to_rgb(im)
        except Image.DecompressionBombError as exc:
            raise HTTPException(413, f"image refused: {exc}") from exc
        except Exception as exc:  # truncated or corrupt pixel data
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise HTTPException(400, f"damaged image: {reason}") from exc


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refusing (413) anything over `max_bytes` without keeping more than that in memory."""
    declared = request.headers.get("content-length")
    too_big = declared is not None and declared.isdigit() and int(declared) > max_bytes
    stream = request.stream()  # one iterator: draining continues where reading stopped
    chunks, size = [], 0
    if not too_big:
        try:
            async for chunk in stream:
                size += len(chunk)
                if size > max_bytes:
                    too_big = True
                    break
                chunks.append(chunk)
        except ClientDisconnect:  # hung up mid-upload: nobody to answer, and nothing for the log but a line
            raise HTTPException(400, "client disconnected before the upload ended") from None
    if too_big:
        with contextlib.suppress(Exception):  # a client that hangs up mid-upload is fine: it gets nothing either way
            async for chunk in stream:
                size += len(chunk)
                if size > DRAIN_LIMIT_BYTES:
                    break
        limit_mb = max_bytes / 2**20
        raise HTTPException(413, f"upload too large: over this server's limit of {limit_mb:g} MB ({max_bytes} bytes)")
    return b"".join(chunks)


async def upload_bytes(request: Request, max_bytes: int) -> bytes:
    """The image bytes of a request: multipart field `file`, else the raw body."""
    body = await read_body(request, max_bytes)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return body

    async def replay() -> dict[str, Any]:
        nonlocal body
        chunk, body = body, b""
        return {"type": "http.request", "body": chunk, "more_body": False}

    form_request = Request(request.scope, receive=replay)
    sent_file = b'name="file"' in body
    try:
        async with form_request.form(max_files=1, max_fields=16) as form:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                if sent_file:  # the part is there, but the parser never reached its end
                    raise HTTPException(400, "multipart upload ends before its closing boundary; send the whole body")
                raise HTTPException(400, "multipart upload needs a file in the field named 'file'")
            return await upload.read()
    except HTTPException:
        raise
    except StarletteHTTPException as exc:  # the form parser's own limits ("Too many files ...")
        raise HTTPException(exc.status_code, f"multipart upload: {exc.detail} (send one image per request)") from exc
    except Exception as exc:  # malformed multipart body
        raise HTTPException(400, f"malformed multipart upload: {str(exc)[:200]}") from exc


# -- micro-batching ----------------------------------------------------------------------------------------------------


class MicroBatcher:
    """Queue single images; one worker runs `scores_fn` on batches of them in a dedicated thread.

    `scores_fn(batch (B, C, H, W)) -> (B, K)`. Requests register with `incoming()` while they decode, so the worker
    knows whether waiting for a fuller batch can pay off.
    """

    def __init__(self, scores_fn: Any, max_batch: int = DEFAULT_MAX_BATCH, max_wait_ms: float = DEFAULT_MAX_WAIT_MS):
        self.scores_fn = scores_fn
        self.max_batch = max(1, max_batch)
        self.max_wait = max(0.0, max_wait_ms) / 1000
        self.requests = 0
        self.batches = 0
        self.largest_batch = 0
        self._decoding = 0
        self._queue: asyncio.Queue | None = None
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="resnetlab-model")

    async def start(self) -> None:
        self._queue, self._arrived = asyncio.Queue(), asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=False, cancel_futures=True)

    @contextlib.asynccontextmanager
    async def incoming(self) -> AsyncIterator[None]:
        """Mark a request as on its way (decoding); on exit it has either been queued or failed."""
        self._decoding += 1
        try:
            yield
        finally:
            self._decoding -= 1
            self._arrived.set()

    def put(self, image: torch.Tensor) -> asyncio.Future:
        """Queue one image (C, H, W); the future resolves to its score row (K,)."""
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((image, future))
        self._arrived.set()
        return future

    async def _collect(self) -> list[tuple[torch.Tensor, asyncio.Future]]:
        items = [await self._queue.get()]
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while len(items) < self.max_batch:
            while len(items) < self.max_batch and not self._queue.empty():
                items.append(self._queue.get_nowait())
            remaining = deadline - asyncio.get_running_loop().time()
            if len(items) >= self.max_batch or self._decoding == 0 or remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:  # noqa: UP041 (Python 3.10: not yet the builtin TimeoutError)
                pass
        return [(image, future) for image, future in items if not future.done()]  # drop requests whose client left

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect()
            if not items:
                continue
            try:
                batch = stack_channels_last([image for image, _ in items])  # (B, C, H, W), channels_last
                scores = await loop.run_in_executor(self._executor, self.scores_fn, batch)
            except Exception as exc:  # reported to each waiting request; the worker keeps going
                for _, future in items:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.requests += len(items)
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(items))
            for row, (_, future) in zip(scores, items):
                if not future.done():
                    future.set_result(row)

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    def stats(self) -> dict[str, Any]:
        mean = self.requests / self.batches if self.batches else 0.0
        return {
            "requests": self.requests,
            "batches": self.batches,
            "mean_batch_size": round(mean, 2),
            "largest_batch": self.largest_batch,
            "max_batch": self.max_batch,
            "max_wait_ms": self.max_wait * 1000,
        }


# -- the app -----------------------------------------------------------------------------------------------------------


def describe_model(clf: Any) -> dict[str, Any]:
    """What /info says about the model: architecture, back end, precision, source file."""
    backend = "onnxruntime" if getattr(clf, "session", None) is not None else "torch"
    arch = getattr(clf, "arch", None) or clf.default_cfg.get("arch") or type(clf.model).__name__
    return {
        "arch": arch,
        "backend": backend,
        "precision": clf.precision.describe(),
        "source": str(clf.source) if getattr(clf, "source", None) else None,
        "num_classes": len(clf.classes),
    }


_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "description": "An image (JPEG, PNG, WebP, GIF, BMP, TIFF): multipart field `file`, or the raw bytes.",
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}},
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
_ERRORS = {
    code: {"model": ErrorMessage, "description": text}
    for code, text in (
        (400, "not an image, damaged image or malformed upload"),
        (413, "upload over the byte limit, or image over the pixel limit"),
        (500, "the model failed on this image"),
    )
}


def create_app(
    clf: Any,
    max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 2**20),
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
) -> FastAPI:
    """A FastAPI app serving `clf` (a `resnetlab.predict.Classifier` or `OnnxClassifier`)."""

    def scores(batch: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(clf.predict_logits(batch), dim=1)  # (B, K) log-probabilities

    batcher = MicroBatcher(scores, max_batch, max_wait_ms)
    # Decoding is bounded to a few threads: that also bounds the memory big (but allowed) images can take at once.
    decode_pool = ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="resnetlab-decode")
    draft_size = getattr(clf, "draft_size", None)
    model_info = describe_model(clf)
    started = time.time()

    def preprocess(data: bytes) -> torch.Tensor:
        # uint8 (C, H, W): the batch is normalised once in `predict_logits`.
        return clf.pixel_transform(decode_image(data, max_pixels, draft_size))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            decode_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title=f"resnetlab: {model_info['arch']} image classifier",
        description=f"{len(clf.classes)} classes. Send an image to POST /predict; the page at / does it for you.",
        version=_version(),
        docs_url=None,  # Swagger/ReDoc load from a CDN; see the module docstring
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.batcher = batcher

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # One failing request gets a 500 with the reason; the server keeps serving the others.
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {str(exc)[:200]}"}, status_code=500)

    @app.post(
        "/predict",
        response_model=list[Prediction],
        summary="Classify one image",
        openapi_extra=_PREDICT_BODY,
        responses=_ERRORS,
    )
    async def predict(
        request: Request,
        topk: int = Query(5, ge=1, description="how many labels to return, best first (capped at the class count)"),
    ) -> list[dict[str, Any]]:
        data = await upload_bytes(request, max_upload_bytes)
        loop = asyncio.get_running_loop()
        async with batcher.incoming():
            image = await loop.run_in_executor(decode_pool, preprocess, data)
            future = batcher.put(image)
        log_probs = await future  # (K,)
        return clf.topk(log_probs[None], topk)[0]

    @app.get(
        "/health", summary="Liveness and batching statistics", responses={503: {"description": "model worker down"}}
    )
    async def health() -> JSONResponse:
        status = "ok" if batcher.alive else "model worker stopped"
        body = {"status": status, "uptime_s": round(time.time() - started, 1), "batching": batcher.stats()}
        return JSONResponse(body, status_code=200 if batcher.alive else 503)

    # Load balancers and uptime monitors often probe with HEAD, which a 405 would report as down.
    app.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)

    @app.get("/info", summary="The model, its classes and preprocessing, and this server's limits")
    async def info() -> dict[str, Any]:
        cfg = clf.default_cfg
        return {
            "model": model_info,
            "classes": list(clf.classes),
            "preprocessing": {k: cfg.get(k) for k in ("input_size", "mean", "std", "crop_pct", "interpolation")},
            "limits": {"max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels},
            "batching": {"max_batch": batcher.max_batch, "max_wait_ms": batcher.max_wait * 1000},
        }

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _version() -> str:
    from resnetlab import __version__

    return __version__
