"""Reading request bodies within a size limit, gzip included, so a large or bombed body is refused early."""

from __future__ import annotations

import zlib

from starlette.requests import Request

__all__ = ["BodyError", "read_body"]


class BodyError(Exception):
    """A body that cannot be accepted, with the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def read_body(request: Request, limit: int) -> bytes:
    """Read and, for gzip, inflate the body; 413 past the limit, 415 for an unknown encoding."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", ""):
        raise BodyError(415, f"unsupported content-encoding {encoding!r}: use gzip or none")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyError(413, f"body of {declared} bytes is over the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyError(413, f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if encoding != "gzip":
        return body
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BodyError(400, f"malformed gzip body: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise BodyError(413, f"inflated body is over the limit of {limit} bytes")
    if not inflater.eof:
        raise BodyError(400, "truncated gzip body")
    return out
