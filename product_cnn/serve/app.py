"""The server: LitServe around :class:`ClassifierAPI`, plus the web page, ``/info`` and ``/health``.

``GET /`` is a page (static/index.html, no external scripts, fonts or CDNs) where a person
drops photos and sees each one's category. ``GET /info`` and ``POST /predict`` need the API key
when one is set; ``GET /`` and ``GET /health`` do not (the page asks for the key). CORS is off
unless origins are configured.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import litserve as ls
from fastapi import HTTPException, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from litserve.utils import WorkerSetupStatus

from product_cnn.confidence.gate import GateOptions
from product_cnn.data.thumbnails import thumbnail_jpeg
from product_cnn.serve.api import ClassifierAPI, bearer_ok
from product_cnn.serve.backends import model_info, resolve_backend
from product_cnn.serve.limits import PredictGuard
from product_cnn.serve.shutdown import UVICORN_GRACE_S, DrainGuard, Stopping

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("static") / "index.html"


def build_server(*, ckpt_path: str | None = None, backend: str = "auto", exported_path: str | None = None,
                 device: str = "auto", workers: int = 1, max_batch_size: int = 8,
                 batch_timeout: float = 0.005, topk: int = 3, max_files: int = 16, max_body_mb: int = 20,
                 api_key: str | None = None, cors_origins: list[str] | None = None,
                 timeout: float = 30, gate: GateOptions | None = None,
                 cache_dir: str | Path | None = None, stopping: Stopping | None = None) -> ls.LitServer:
    """A LitServer ready to ``run()``; a one-line error if the model cannot be served.

    ``exported_path`` is the ``.onnx`` / OpenVINO ``.xml`` file of ``backend=onnx|openvino``;
    ``backend=auto`` serves the checkpoint's export from ``cache_dir`` where a runtime is installed;
    ``stopping`` (shared with :func:`~product_cnn.serve.shutdown.stop_on_sigterm`): once set,
    predictions get 503 and those in flight are counted."""
    backend, exported_path = resolve_backend(backend, ckpt_path, exported_path, device=device,
                                             cache_dir=cache_dir)
    info = model_info(backend, ckpt_path, exported_path, gate=gate)
    api = ClassifierAPI(info, ckpt_path, exported_path, topk=topk, max_files=max_files,
                        max_bytes=max_body_mb * 2**20, api_key=api_key or None,
                        max_batch_size=max_batch_size, batch_timeout=batch_timeout)
    accelerator = "cpu" if backend != "torch" else device
    server = ls.LitServer(api, accelerator=accelerator, workers_per_device=workers, timeout=timeout)
    server.uvicorn_graceful_timeout = UVICORN_GRACE_S  # LitServe's 30 s: SIGTERM has drained already
    _replace_routes(server, info.as_dict(), api_key or None, info.photos)
    server.app.add_middleware(PredictGuard, max_bytes=max_body_mb * 2**20)
    server.app.add_middleware(DrainGuard, stopping=stopping or Stopping())

    @server.app.exception_handler(HTTPException)
    async def one_line(request: Request, err: HTTPException) -> JSONResponse:  # {"error": ...} everywhere
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code, headers=err.headers)

    if cors_origins:
        server.app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins),
                                  allow_methods=["GET", "POST"],
                                  allow_headers=["Authorization", "Content-Type"])
    return server


def _replace_routes(server: ls.LitServer, info: dict[str, Any], api_key: str | None,
                    photos: list[str] | None = None) -> None:
    """Our ``/``, ``/info`` and ``/health`` in place of LitServe's own, and ``/photo/<row>`` (a
    thumbnail of the training photo of bank row ``row``, where the file is on this machine)."""
    mine = {"/", "/info", "/health"}
    server.app.router.routes = [
        r for r in server.app.router.routes
        if not (getattr(r, "path", None) in mine and "GET" in getattr(r, "methods", set()))]
    page = PAGE.read_text()

    @server.app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @server.app.get("/health")
    async def health() -> Response:
        ready = bool(server.workers_setup_status) and all(
            v == WorkerSetupStatus.READY for v in server.workers_setup_status.values())
        return Response("ok" if ready else "not ready", status_code=200 if ready else 503)

    @server.app.get("/photo/{row}")
    async def photo(row: int, request: Request) -> Response:
        if not bearer_ok(request.headers.get("authorization"), api_key):
            return JSONResponse({"error": "missing or wrong API key: send Authorization: Bearer <key>"},
                                status_code=401)
        if not photos or not 0 <= row < len(photos):
            return JSONResponse({"error": f"no training photo {row}: the model names {len(photos or [])}"},
                                status_code=404)
        jpeg = thumbnail_jpeg(photos[row])
        if jpeg is None:
            return JSONResponse({"error": f"training photo {row} is not readable on this server"},
                                status_code=404)
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @server.app.get("/info")
    async def model(request: Request) -> JSONResponse:
        if not bearer_ok(request.headers.get("authorization"), api_key):
            return JSONResponse({"error": "missing or wrong API key: send Authorization: Bearer <key>"},
                                status_code=401)
        return JSONResponse(info)
