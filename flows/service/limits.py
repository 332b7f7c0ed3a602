"""Request body cap, enforced before the body is parsed."""

from __future__ import annotations

from flows.service import errors
from flows.service.errors import APIError


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with 413, before parsing them.

    A declared Content-Length is checked up front; chunked bodies are counted as they arrive.
    """

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        seen = 0
        started = too_large = False

        async def counting_receive():
            nonlocal seen, too_large
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    too_large = True
                    raise BodyTooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            if too_large:
                # The route caught the error while reading the body (FastAPI answers any body
                # read error with 400): answer 413 instead of what it says.
                if not started:
                    started = True
                    await self._refuse(send)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send):
        err = APIError(413, f"The request body is larger than {self.limit / 2**20:.1f} MiB; "
                       "uploads are limited by service.uploads.max_bytes.", code="request_too_large")
        response = errors.error_response(err)
        body = response.body
        await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": body})
