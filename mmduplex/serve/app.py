"""The web app of ``mmduplex serve`` (FastAPI on uvicorn): the page, the video files and one WebSocket per viewer.

Routes:

- ``GET /``: the page (``static/``); ``GET /api/info``: the model and the limits; ``GET /api/videos``: the
  library's videos (``--videos DIR``);
- ``GET /videos/<path>``: a library file, only under ``DIR`` (:class:`~mmduplex.serve.files.VideoLibrary`);
  ``GET /uploads/<name>``: an upload the store issued;
- ``POST /api/upload``: a video as multipart field ``file``; answers ``{"video": {...}}``, or a 4xx with
  ``{"error": "..."}``: 400 not a multipart upload or no ``file``, 403 from another site's page, 413 over the size
  limit, 415 not a video the server can decode, 429 too many uploads or viewers;
- ``WS /api/session``: one viewer's stream. The page sends ``{"type": "start", "video": ID}``, gets ``{"type":
  "ready", ...}``, starts the ``<video>`` and sends ``{"type": "play"}`` as it starts playing: that moment is
  stream time 0. Then ``{"type": "ask", "text", "t"}`` types a question at video time ``t``, and the server sends
  the stream's messages (:mod:`mmduplex.serve.live`) until ``end`` or ``error``. A notice (``{"type": "notice",
  "message"}``) says a message was refused without ending the stream.

WebSocket rather than server-sent events: the viewer's questions and the model's lines travel on one connection
whose life is the session's, so a closed tab ends its session at once (no second request to tie to a stream, no
idle stream to time out). Each viewer gets a :class:`~mmduplex.inference.session.DuplexSession` of its own on the
shared model, run in a worker thread (at most ``max_sessions`` at once); closing the socket stops it within a step
and frees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException

from mmduplex.errors import InputError, VideoError
from mmduplex.io.video import probe_video
from mmduplex.serve.files import VIDEO_SUFFIXES, UploadError, UploadStore, VideoFile, VideoLibrary
from mmduplex.serve.live import LiveStream

if TYPE_CHECKING:
    from mmduplex.inference.model import DuplexModel

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
"""The page's files."""
PLAY_TIMEOUT_S = 60.0
"""Seconds the server waits for a viewer's ``start`` and ``play`` messages."""
MULTIPART_SLACK = 64 * 1024
"""Bytes of multipart framing allowed over the upload size limit."""


@dataclass(frozen=True)
class ServeSettings:
    """What ``mmduplex serve`` serves and its limits."""

    videos: Path | None = None
    """The library folder (``--videos DIR``); ``None``: uploads only."""
    max_sessions: int = 4
    """Most viewers streaming at once; one more is refused (the socket closes with code 1013)."""
    max_upload_mb: float = 200.0
    """Largest upload accepted (MiB)."""
    max_uploads: int = 8
    """Most uploads kept at once (each is deleted when its session ends)."""
    upload_ttl_s: float = 600.0
    """Seconds an upload no session has started on is kept."""
    temperature: float = 0.0
    """Sampling temperature of every viewer's session; 0 is greedy."""
    top_k: int | None = None
    """Sample among the ``top_k`` most likely tokens only (``None``: all)."""
    pad_bias: float = 0.0
    """Added to the PAD logit: > 0 quieter, < 0 more talkative."""
    seed: int = 0
    """Seed of each session's sampling generator."""

    @property
    def sampling(self) -> dict[str, Any]:
        """The :meth:`DuplexModel.session` arguments."""
        return {"temperature": self.temperature, "top_k": self.top_k, "pad_bias": self.pad_bias, "seed": self.seed}

    def __post_init__(self) -> None:
        if self.max_sessions < 1 or self.max_uploads < 1:
            raise InputError("--max-sessions", f"need at least one session and upload, got {self}")
        if not self.max_upload_mb > 0:
            raise InputError("--max-upload-mb", f"must be > 0, got {self.max_upload_mb}")


class _TooLarge(Exception):
    pass


class _ServerState:
    """The app's shared state: the model, the files, the open viewers and their worker threads."""

    def __init__(self, model: DuplexModel, settings: ServeSettings) -> None:
        self.model, self.settings = model, settings
        self.library = VideoLibrary(settings.videos)
        self.uploads = UploadStore(int(settings.max_upload_mb * 2**20), settings.max_uploads, settings.upload_ttl_s)
        self.executor = ThreadPoolExecutor(max_workers=settings.max_sessions, thread_name_prefix="mmduplex-stream")
        self.viewers = 0  # open sockets holding a session slot
        self.streams: set[LiveStream] = set()

    def resolve(self, video_id: Any) -> VideoFile | None:
        """The file a page's video id names (``videos/...`` or ``uploads/...``), if it is one the server may show."""
        if not isinstance(video_id, str):
            return None
        kind, _, rest = video_id.partition("/")
        if kind == "videos":
            return self.library.resolve(rest)
        if kind == "uploads":
            return self.uploads.resolve(rest)
        return None

    def viewer_done(self, task: asyncio.Future[None]) -> None:
        """A viewer's socket handler ended: give its slot back."""
        self.viewers -= 1
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            log.error("viewer failed: %s", error, exc_info=(type(error), error, error.__traceback__))

    def close(self) -> None:
        for stream in list(self.streams):
            stream.close()
        self.executor.shutdown(wait=True)
        self.uploads.close()


def create_app(model: DuplexModel, settings: ServeSettings | None = None) -> FastAPI:
    """The app serving ``model`` (see the module docstring); its state is ``app.state.serve``."""
    settings = settings or ServeSettings()
    state = _ServerState(model, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        state.close()

    app = FastAPI(title="mmduplex serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve = state
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/")
    async def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        path = model.path.name if model.path is not None else None
        return {"model": path, "step_hz": model.step_hz, "fps": model.fps,
                "delay_s": model.bundle.delay_steps / model.step_hz, "encoder": model.bundle.encoder_spec,
                "max_sessions": settings.max_sessions, "viewers": state.viewers,
                "max_upload_mb": settings.max_upload_mb, "suffixes": list(VIDEO_SUFFIXES)}  # fmt: skip

    @app.get("/api/videos")
    async def videos() -> dict[str, Any]:
        listed = await run_in_threadpool(state.library.list)
        return {"videos": [video.public() for video in listed]}

    @app.get("/videos/{path:path}")
    async def library_file(path: str) -> Response:
        return _file(state.library.resolve(path))

    @app.get("/uploads/{name}")
    async def upload_file(name: str) -> Response:
        return _file(state.uploads.resolve(name))

    @app.post("/api/upload")
    async def upload(request: Request) -> JSONResponse:
        try:
            video = await _receive_upload(request, state)
        except UploadError as err:
            return JSONResponse({"error": str(err)}, status_code=err.status)
        log.info("upload %s stored as %s", video.name, video.id)
        return JSONResponse({"video": video.public()})

    @app.websocket("/api/session")
    async def session_socket(websocket: WebSocket) -> None:
        if not _same_origin(websocket.headers):
            await websocket.close(1008)  # before accepting: the handshake is answered 403
            return
        await websocket.accept()
        if state.viewers >= settings.max_sessions:
            message = f"the server is busy: {state.viewers} viewers are watching (the limit); try again later"
            await _refuse(websocket, 1013, message)
            return
        state.viewers += 1
        viewer = asyncio.ensure_future(_viewer(websocket, state))
        viewer.add_done_callback(state.viewer_done)
        # The viewer's own task: cancelling this one (the server stopping, a test client leaving) does not cut its
        # clean-up short, and the slot is given back only once its session is freed.
        await asyncio.shield(viewer)

    return app


def _file(video: VideoFile | None) -> Response:
    if video is None:
        return JSONResponse({"error": "no such video"}, status_code=404)
    return FileResponse(video.path)


async def _refuse(websocket: WebSocket, code: int, message: str) -> None:
    with contextlib.suppress(Exception):
        await websocket.send_json({"type": "error", "message": message})
        await websocket.close(code)


async def _receive(websocket: WebSocket, timeout: float | None = None) -> dict[str, Any]:
    """The next JSON object from the page (``{}`` for anything else)."""
    text = await asyncio.wait_for(websocket.receive_text(), timeout)
    try:
        message = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return message if isinstance(message, dict) else {}


async def _viewer(websocket: WebSocket, state: _ServerState) -> None:
    """One viewer's socket: the start handshake, then the stream until it ends or the socket closes."""
    try:
        start = await _receive(websocket, PLAY_TIMEOUT_S)
    except WebSocketDisconnect:
        return
    except asyncio.TimeoutError:
        await _refuse(websocket, 1008, "no start message")
        return
    if start.get("type") != "start":
        await _refuse(websocket, 1008, 'the first message must be {"type": "start", "video": ID}')
        return
    video = state.resolve(start.get("video"))
    if video is None:
        await _refuse(websocket, 1008, f"no such video: {start.get('video')!r}")
        return
    upload = video.id.partition("/")[2] if video.id.startswith("uploads/") else None
    if upload is not None:
        state.uploads.use(upload)
    try:
        await _stream(websocket, state, video)
    except WebSocketDisconnect:
        pass
    finally:
        if upload is not None:
            state.uploads.release(upload)


async def _stream(websocket: WebSocket, state: _ServerState, video: VideoFile) -> None:
    model = state.model
    await websocket.send_json({"type": "ready", "video": video.public(), "step_hz": model.step_hz,
                               "fps": model.fps, "delay_s": model.bundle.delay_steps / model.step_hz})  # fmt: skip
    try:
        play = await _receive(websocket, PLAY_TIMEOUT_S)
    except asyncio.TimeoutError:
        await _refuse(websocket, 1008, "the browser did not start the video")
        return
    if play.get("type") != "play":
        await _refuse(websocket, 1000, "stopped before playing")
        return
    origin = time.perf_counter()
    loop = asyncio.get_running_loop()
    outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def emit(message: dict[str, Any]) -> None:  # from the worker thread
        try:
            loop.call_soon_threadsafe(outbox.put_nowait, message)
        except RuntimeError:  # the event loop is gone: the server is stopping
            live.close()

    live = LiveStream(model, video.path, emit, state.settings.sampling)
    state.streams.add(live)
    worker = loop.run_in_executor(state.executor, live.run, origin)
    worker.add_done_callback(lambda _: outbox.put_nowait(None))
    sender = asyncio.create_task(_pump(websocket, outbox))
    listener = asyncio.create_task(_listen(websocket, live, outbox.put_nowait))
    try:
        await asyncio.wait({sender, listener}, return_when=asyncio.FIRST_COMPLETED)
        with contextlib.suppress(Exception):  # the stream ended or the page said stop (not when the page left)
            await websocket.close(1000)
    finally:
        live.close()
        for task in (sender, listener):
            task.cancel()
        await asyncio.gather(sender, listener, return_exceptions=True)
        with contextlib.suppress(Exception):
            await worker  # within a step of close(): the session is freed before the slot is
        state.streams.discard(live)


async def _pump(websocket: WebSocket, outbox: asyncio.Queue[dict[str, Any] | None]) -> None:
    """Send the stream's messages until the worker is done."""
    while (message := await outbox.get()) is not None:
        await websocket.send_json(message)


async def _listen(websocket: WebSocket, live: LiveStream, notify: Callable[[dict[str, Any]], None]) -> None:
    """The page's messages during the stream: questions, and ``stop``."""
    while True:
        message = await _receive(websocket)
        kind = message.get("type")
        if kind == "stop":
            return
        if kind != "ask":
            notify({"type": "notice", "message": f"unknown message type {kind!r} (expected 'ask' or 'stop')"})
            continue
        try:
            live.ask(message.get("text"), message.get("t"))
        except InputError as err:
            notify({"type": "notice", "message": f"question not typed: {err.problem}"})


async def _receive_upload(request: Request, state: _ServerState) -> VideoFile:
    """Read an upload (multipart field ``file``) into the store, within the limits, and check it is a video.

    Raises:
        UploadError: the 4xx to answer with.
    """
    settings, store = state.settings, state.uploads
    if not _same_origin(request.headers):
        raise UploadError(403, "uploads come from the server's own page only")
    if state.viewers >= settings.max_sessions:
        raise UploadError(429, f"the server is busy: {state.viewers} viewers are watching (the limit)")
    limit = f"the {settings.max_upload_mb:g} MB upload limit"
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > store.max_bytes + MULTIPART_SLACK:
        raise UploadError(413, f"the file is larger than {limit}")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise UploadError(400, "send the video as multipart/form-data, in the field 'file'")
    bounded = Request(request.scope, _bounded(request.receive, store.max_bytes + MULTIPART_SLACK))
    try:
        form = await bounded.form(max_files=1, max_fields=8)
    except _TooLarge:
        raise UploadError(413, f"the file is larger than {limit}") from None
    except MultiPartException as err:
        raise UploadError(400, f"a broken multipart upload: {err.message}") from None
    try:
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise UploadError(400, "no file: send the video in the multipart field 'file'")
        path = store.reserve(file.filename or "")
        size = 0
        with path.open("wb") as out:
            while chunk := await file.read(2**20):
                size += len(chunk)
                if size > store.max_bytes:
                    break
                out.write(chunk)
        if size > store.max_bytes or size == 0:
            store.discard(path)
            raise UploadError(413 if size else 400, f"the file is larger than {limit}" if size else "an empty file")
        try:
            await run_in_threadpool(probe_video, path)
        except VideoError as err:
            store.discard(path)
            raise UploadError(415, f"{file.filename!r} is not a video the server can read: {err.problem}") from None
        return store.add(path, file.filename or path.name)
    finally:
        await form.close()


def _same_origin(headers: Headers) -> bool:
    """Whether a request comes from the server's own page (or from no page: a script, a test client). Another site's
    page in the viewer's browser may not upload or open sessions (a form POST or a WebSocket needs no CORS consent)."""
    origin = headers.get("origin")
    return origin is None or urlsplit(origin).netloc == headers.get("host")


def _bounded(receive: Callable[[], Awaitable[dict[str, Any]]], limit: int) -> Callable[[], Awaitable[dict[str, Any]]]:
    """``receive`` that raises :class:`_TooLarge` once the request body passes ``limit`` bytes."""
    seen = 0

    async def bounded() -> dict[str, Any]:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge
        return message

    return bounded
