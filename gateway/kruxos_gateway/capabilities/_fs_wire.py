"""The file worker's protocol: length-prefixed frames over one pair of pipes, without I/O.

A frame is a request id, a header (one JSON object, ASCII) and a raw segment (file content, often
empty), each length given before it::

    u32 id | u32 header length | u32 raw length | header | raw          (big-endian)

The gateway sends ``{"op": NAME, "args": {...}}`` (raw: what ``write`` writes); the worker answers each
request, in any order, under the request's id, with ``{"ok": {...}}`` (raw: what ``read`` read) or
``{"error": {"class": NAME, "message": ..., "recovery": [...], "details": {...}}}``. A ``list``
answer's entries carry no ``path`` (the gateway adds it), which keeps 10,000 entries small.

The id travels outside the JSON so that the gateway hands a frame to the request waiting for it
without parsing it; the waiting request parses and validates it (``_fs_client.py``): the worker
runs as the agent's uid, so what it sends is untrusted. Each side bounds both lengths before it
keeps a byte of a frame. Standard library only: the worker imports it.
"""

from __future__ import annotations

import json
import struct
from typing import Any

PREFIX = struct.Struct(">III")


class FrameError(Exception):
    """The peer broke the framing: a length over its bound (nothing after it can be trusted)."""


def frame(request_id: int, header: dict[str, Any], raw: bytes = b"") -> tuple[bytes, bytes]:
    """One frame as the bytes to write: the prefix and header, then the raw segment (not copied).

    ``ensure_ascii`` (json's default): a lone surrogate in a path (the agent may send one) travels as
    ``\\udcff`` and is read back as itself.
    """
    body = json.dumps(header, separators=(",", ":")).encode("ascii")
    return PREFIX.pack(request_id, len(body), len(raw)) + body, raw


def parse_header(body: bytes) -> dict[str, Any]:
    """The header of a frame as a dict; ``ValueError`` if it is not one JSON object."""
    try:
        header = json.loads(body)
    except RecursionError:  # nested past the interpreter's limit
        raise ValueError("the header is nested too deep") from None
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    return header


class FrameReader:
    """Bytes in, whole frames out: ``(id, header bytes, raw bytes)``; ``FrameError`` on a bad length.

    A raw segment is gathered as the views of the chunks it came in and joined once: file content
    is copied once here, not into a growing buffer and out of it again.
    """

    def __init__(self, max_header: int, max_raw: int) -> None:
        self.max_header = max_header
        self.max_raw = max_raw
        self._buffer = bytearray()  # the prefix, then the header, of the frame being received
        self._lengths: tuple[int, int, int] | None = None  # its id and lengths, once its prefix is in
        self._header = b""
        self._chunks: list[memoryview] = []  # its raw segment so far
        self._missing = -1  # bytes of the raw segment still to come; -1: not receiving one

    def feed(self, data: bytes) -> list[tuple[int, bytes, bytes]]:
        frames = []
        view = memoryview(data)
        while True:
            if self._missing >= 0:
                part = view[: self._missing]
                view = view[len(part) :]
                if part:
                    self._chunks.append(part)
                self._missing -= len(part)
                if self._missing:
                    break
                assert self._lengths is not None
                frames.append((self._lengths[0], self._header, b"".join(self._chunks)))
                self._lengths, self._header, self._chunks, self._missing = None, b"", [], -1
                continue
            wanted = PREFIX.size if self._lengths is None else self._lengths[1]
            taken = view[: wanted - len(self._buffer)]
            view = view[len(taken) :]
            self._buffer += taken
            if len(self._buffer) < wanted:
                break
            if self._lengths is None:
                request_id, header_length, raw_length = PREFIX.unpack(self._buffer)
                if header_length > self.max_header or raw_length > self.max_raw:
                    raise FrameError(
                        f"a frame of {header_length} + {raw_length} bytes, over the bounds of "
                        f"{self.max_header} + {self.max_raw}"
                    )
                self._lengths = (request_id, header_length, raw_length)
            else:
                self._header = bytes(self._buffer)
                self._missing = self._lengths[2]
            self._buffer.clear()
        return frames
