"""The bytes a WebSocket client sends, split frame by frame before aiohttp's reader sees them: no I/O.

``ClientFrames`` reads every frame header as it arrives, and

* refuses a message past the hard size limit from its header, before one byte of its payload is
  kept (aiohttp 3.11, Debian 13's, checks a message's size only once all of it has arrived, so a
  frame that declares a 4 GiB payload would be buffered to the end);
* records when the client last completed a frame other than a pong (an answer to the gateway's own
  keepalive ping is not activity);
* once ``taking`` is set, takes each text message sent as one frame itself and returns its text, so
  that the session starts answering it in the same turn of the event loop instead of the next one
  (aiohttp's reader queues it for ``receive()``, one more wake-up per request; bench/gateway_bench.py).
  Everything else — control frames, and from the first fragmented, binary or otherwise unusual data
  frame on, everything — goes to aiohttp's reader byte for byte, so what arrives stays in order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

_TEXT = 0x1
_PONG = 0xA
_NOTHING = b""


@dataclass
class Split:
    """What one read of the socket holds, in order within each part."""

    #: Bytes for aiohttp's reader: whole frames, or the parts of frames it already had the start of.
    passthrough: bytes = _NOTHING
    #: Text messages taken here, to be answered now.
    texts: list[str] = field(default_factory=list)
    #: A message goes past the hard limit: nothing more is to be read; the connection closes 1009.
    too_big: bool = False


def unmask(payload: bytes | bytearray, mask: bytes) -> bytes:
    """``payload`` XOR the repeated 4-byte ``mask`` (RFC 6455, 5.3)."""
    n = len(payload)
    if not n:
        return _NOTHING
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload) ^ int.from_bytes(key)).to_bytes(n)


class ClientFrames:
    """Follows one connection's client-to-server frames; feed it every byte, in order."""

    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        #: ``time.monotonic()`` when the client last completed a frame other than a pong.
        self.last_activity = time.monotonic()
        #: Whether text messages in one frame are taken (set once the session can answer them).
        self.taking = False
        self._given_up = False  # a data frame was not taken: from then on, nothing is
        self._head = _NOTHING  # a frame header split across reads, so far
        self._left = 0  # payload bytes of the current frame still to come
        self._mine = False  # whether the current frame is taken
        self._header = _NOTHING  # the header of the frame taken, should aiohttp get it after all
        self._payload = bytearray()  # its payload so far, still masked
        self._pong = False
        self._message = 0  # payload bytes of the fragmented message under way
        self._refused = False

    def feed(self, data: bytes) -> Split:
        """Follow ``data``, the next bytes the client sent."""
        split = Split()
        if self._refused:
            split.too_big = True
            return split
        passthrough: list[bytes] = []
        pos, end = 0, len(data)
        while pos < end:
            if self._left:
                taken = min(self._left, end - pos)
                if self._mine:
                    self._payload += data[pos : pos + taken]
                else:
                    passthrough.append(data[pos : pos + taken])
                pos += taken
                self._left -= taken
                if not self._left:
                    self._frame_done(split, passthrough)
                continue
            head = self._head + data[pos : pos + 14] if self._head else data[pos : pos + 14]
            masked = len(head) >= 2 and bool(head[1] & 0x80)
            flag = head[1] & 0x7F if len(head) >= 2 else 0
            size = 2 + (2 if flag == 126 else 8 if flag == 127 else 0) + (4 if masked else 0)
            if len(head) < size:
                self._head = head
                break
            pos += size - len(self._head)
            self._head = _NOTHING
            header = head[:size]
            length = int.from_bytes(head[2 : 2 + (2 if flag == 126 else 8)]) if flag >= 126 else flag
            opcode, fin = head[0] & 0x0F, head[0] >> 7
            if opcode < 8:  # a data frame: continuation, text or binary
                if self._message + length > self.max_message_bytes:
                    self._refused = split.too_big = True
                    break
                # Taken: a whole text message, masked as a client's must be, without extension bits.
                self._mine = (
                    self.taking
                    and not self._given_up
                    and not self._message
                    and masked
                    and head[0] == 0x80 | _TEXT
                )
                if not self._mine and self.taking:
                    self._given_up = True
                self._message = 0 if fin else self._message + length
            else:
                self._mine = False
            self._pong = opcode == _PONG
            if self._mine:
                self._header = header
                self._payload = bytearray()
            else:
                passthrough.append(header)
            self._left = length
            if not length:
                self._frame_done(split, passthrough)
        if passthrough:
            split.passthrough = passthrough[0] if len(passthrough) == 1 else _NOTHING.join(passthrough)
        return split

    def _frame_done(self, split: Split, passthrough: list[bytes]) -> None:
        if not self._pong:
            self.last_activity = time.monotonic()
        if not self._mine:
            return
        self._mine = False
        payload, self._payload = self._payload, bytearray()
        try:
            split.texts.append(unmask(payload, self._header[-4:]).decode())
        except UnicodeDecodeError:
            # aiohttp closes the connection for it (1007): hand it the frame as it came.
            self._given_up = True
            passthrough.extend((self._header, bytes(payload)))
