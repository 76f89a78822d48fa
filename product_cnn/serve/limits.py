"""Checks on ``POST /predict`` before LitServe sees the request, as a plain ASGI middleware.

The body is read up to ``max_bytes`` (413 beyond, by its Content-Length at once or while it
streams in), must not be empty, and JSON bodies must parse; each refusal is a 4xx with a
one-line JSON reason. The checked body is then handed on unchanged. (LitServe's own
``max_payload_size`` could not be used: with it, LitServe 0.2.19 failed every request.)
"""

from __future__ import annotations

import json
from typing import Any


async def answer(send: Any, status: int, reason: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    """An ASGI response ``{"error": reason}`` with ``status`` (and ``extra`` headers)."""
    body = json.dumps({"error": reason}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class PredictGuard:
    """Size, emptiness and JSON syntax of prediction requests; other routes pass through."""

    def __init__(self, app: Any, max_bytes: int, path: str = "/predict") -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.path = path

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") != self.path or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        limit = f"request larger than the {self.max_bytes // 2**20} MB limit"
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await answer(send, 413, limit)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await answer(send, 413, limit)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if not body:
            await answer(send, 400, "empty request: send a photo in the multipart form field 'file' "
                                     "or JSON {\"image\": <base64>}")
            return
        if headers.get(b"content-type", b"").split(b";")[0].strip() == b"application/json":
            try:
                json.loads(body)
            except ValueError as err:
                await answer(send, 400, f"malformed JSON: {err}")
                return
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
