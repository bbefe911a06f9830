"""Server-Sent Events read from a line stream (the parsing rules of the HTML standard's
EventSource, without reconnection: the client reconnects itself, with the last id)."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ServerSentEvent:
    event: str
    data: str
    #: the stream's position after this event: send it back as Last-Event-ID
    id: str | None
    retry: int | None = None


class _Parser:
    def __init__(self) -> None:
        self.last_id: str | None = None
        self._reset()

    def _reset(self) -> None:
        self.event, self.data, self.retry = "", [], None

    def feed(self, line: str) -> ServerSentEvent | None:
        line = line.rstrip("\r\n")
        if not line:
            if not self.data and not self.event:
                self._reset()
                return None
            message = ServerSentEvent(
                self.event or "message", "\n".join(self.data), self.last_id, self.retry
            )
            self._reset()
            return message
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        elif name == "id" and "\x00" not in value:
            self.last_id = value
        elif name == "retry" and value.isdigit():
            self.retry = int(value)
        return None


def iter_sse(lines: Iterable[str]) -> Iterator[ServerSentEvent]:
    parser = _Parser()
    for line in lines:
        message = parser.feed(line)
        if message is not None:
            yield message


async def aiter_sse(lines: AsyncIterable[str]) -> AsyncIterator[ServerSentEvent]:
    parser = _Parser()
    async for line in lines:
        message = parser.feed(line)
        if message is not None:
            yield message
