"""A pull-style streaming reader of `multipart/form-data` over the raw request body.

Starlette's `request.form()` spools every file part (to memory up to 1 MB, then to a temporary
file in clear); an upload of a patient's photo must never touch the disk unencrypted. This reader
drives python-multipart's push parser from `request.stream()` and hands out one part at a time:
small form fields as strings, the file part as an async iterator of chunks that the caller
encrypts as they arrive. Memory stays at one network chunk plus the fields.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from clinvault_shared.errors import BadRequest, PayloadTooLarge

MAX_FIELD_BYTES = 8 * 1024
MAX_FIELDS = 32


@dataclass
class Part:
    """One part's headers: its form field name, and the file name if it is a file."""

    name: str
    filename: str | None
    content_type: str | None


@dataclass
class _Events:
    items: deque[tuple[str, bytes]] = field(default_factory=deque)
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    headers: dict[str, bytes] = field(default_factory=dict)
    ended: bool = False


def boundary_of(content_type: str | None) -> bytes:
    """The multipart boundary from a Content-Type header, or 400."""
    kind, params = parse_options_header(content_type or "")
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise BadRequest("send the upload as multipart/form-data")
    return boundary


class MultipartReader:
    """Reads parts in order from a body stream; the body is read only as far as asked."""

    def __init__(
        self, body: AsyncIterator[bytes], content_type: str | None, *, max_body_bytes: int
    ) -> None:
        self._body = body
        self._max_body_bytes = max_body_bytes
        self._seen = 0
        self._events = _Events()
        self._in_part = False
        self._fields = 0
        events = self._events

        def on_header_field(data: bytes, start: int, end: int) -> None:
            events.header_field += data[start:end]

        def on_header_value(data: bytes, start: int, end: int) -> None:
            events.header_value += data[start:end]

        def on_header_end() -> None:
            events.headers[events.header_field.decode("latin-1").lower()] = bytes(
                events.header_value
            )
            events.header_field.clear()
            events.header_value.clear()

        def on_headers_finished() -> None:
            disposition = events.headers.get("content-disposition", b"")
            events.items.append(("part", disposition))
            events.items.append(("type", events.headers.get("content-type", b"")))
            events.headers.clear()

        def on_part_data(data: bytes, start: int, end: int) -> None:
            events.items.append(("data", bytes(data[start:end])))

        def on_part_end() -> None:
            events.items.append(("end", b""))

        def on_end() -> None:
            events.ended = True

        self._parser = MultipartParser(
            boundary_of(content_type),
            {
                "on_header_field": on_header_field,
                "on_header_value": on_header_value,
                "on_header_end": on_header_end,
                "on_headers_finished": on_headers_finished,
                "on_part_data": on_part_data,
                "on_part_end": on_part_end,
                "on_end": on_end,
            },
        )

    async def _next_event(self) -> tuple[str, bytes] | None:
        while not self._events.items:
            if self._events.ended:
                return None
            try:
                chunk = await anext(self._body)
            except StopAsyncIteration:
                if not self._events.ended:
                    raise BadRequest("the multipart body ended early") from None
                return None
            self._seen += len(chunk)
            if self._seen > self._max_body_bytes:
                raise PayloadTooLarge()
            try:
                self._parser.write(chunk)
            except MultipartParseError:
                raise BadRequest("the multipart body is malformed") from None
        return self._events.items.popleft()

    async def next_part(self) -> Part | None:
        """Skip whatever is left of the current part and return the next one's headers."""
        while True:
            event = await self._next_event()
            if event is None:
                return None
            kind, value = event
            if kind == "part":
                self._fields += 1
                if self._fields > MAX_FIELDS:
                    raise BadRequest(f"at most {MAX_FIELDS} form fields are accepted")
                _, params = parse_options_header(value)
                type_event = await self._next_event()
                content_type = type_event[1].decode("latin-1") if type_event else ""
                filename = params.get(b"filename")
                self._in_part = True
                return Part(
                    name=params.get(b"name", b"").decode("utf-8", "replace"),
                    filename=filename.decode("utf-8", "replace") if filename is not None else None,
                    content_type=content_type or None,
                )

    async def read_text(self) -> str:
        """The current part's whole value as text (bounded: fields are small)."""
        buffer = bytearray()
        async for chunk in self.iter_data():
            buffer += chunk
            if len(buffer) > MAX_FIELD_BYTES:
                raise BadRequest(f"a form field is longer than {MAX_FIELD_BYTES} bytes")
        try:
            return buffer.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("form fields must be UTF-8 text") from None

    async def iter_data(self) -> AsyncIterator[bytes]:
        """The current part's bytes, chunk by chunk, as they arrive from the network."""
        while self._in_part:
            event = await self._next_event()
            if event is None:
                raise BadRequest("the multipart body ended early")
            kind, value = event
            if kind == "data":
                if value:
                    yield value
            elif kind == "end":
                self._in_part = False

    async def finish(self) -> None:
        """Read the rest of the body, refusing any further part (the file must come last)."""
        while True:
            part = await self.next_part()
            if part is None:
                return
            raise BadRequest("the file must be the last part of the form")
