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
    """Read and, for gzip, inflate every member; 413 past the limit, 415 for an unknown encoding."""
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
    # A gzip body may hold several members (RFC 1952 2.2), each one inflated in turn and joined: a
    # reader that stops after the first would answer 200 for records it never saw.
    parts: list[bytes] = []
    size = 0
    rest = body
    while True:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            part = inflater.decompress(rest, limit + 1 - size)  # never 0, which would mean no limit
        except zlib.error as exc:
            at = len(body) - len(rest)
            raise BodyError(400, f"malformed gzip body (the member at byte {at}): {exc}") from None
        parts.append(part)
        size += len(part)
        if size > limit or inflater.unconsumed_tail:
            raise BodyError(413, f"inflated body is over the limit of {limit} bytes")
        if not inflater.eof:
            raise BodyError(400, "truncated gzip body")
        rest = inflater.unused_data
        if not rest:
            return b"".join(parts)
