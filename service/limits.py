"""Request size limits enforced on the bytes as they arrive, whatever the transfer encoding.

A declared Content-Length over the limit is answered 413 before a byte is read. Otherwise the
body is counted while the application reads it (chunked bodies included), and a multipart body is
parsed alongside, so a file over the per-file limit, or more files than the route takes, stops
the upload at that point with 413 naming the file: the server never stores more than the limits.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header
from starlette.exceptions import HTTPException


class BodyTooLarge(HTTPException):
    """Raised from the body stream; FastAPI lets HTTPExceptions through body parsing unchanged."""

    def __init__(self, message: str, file: str | None = None) -> None:
        super().__init__(413, message, headers={"Connection": "close"})
        self.file = file


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):g} MiB"


class MultipartCounter:
    """Counts the bytes of each file part and the parts of each field of a multipart body."""

    # Parts beyond the files of the two file fields (fit, adapt and uda-global's source_files): form
    # fields.
    EXTRA_PARTS = 64

    def __init__(self, boundary: bytes, max_file_bytes: int, max_files: int) -> None:
        self.max_file_bytes, self.max_files = max_file_bytes, max_files
        self.max_parts = 2 * max_files + self.EXTRA_PARTS
        self.files_per_field: dict[str, int] = {}
        self.parts = 0
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._part: tuple[str, str | None] | None = None  # (field, filename or None)
        self._part_bytes = 0
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._begin,
                "on_header_field": self._field,
                "on_header_value": self._value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_done,
                "on_part_data": self._data,
            },
        )

    def feed(self, chunk: bytes) -> None:
        self._parser.write(chunk)

    def _begin(self) -> None:
        self._headers, self._part, self._part_bytes = {}, None, 0

    def _field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[bytes(self._header_name).lower()] = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _headers_done(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        field = options.get(b"name", b"").decode("latin-1")
        filename = (
            options[b"filename"].decode("utf-8", "replace") if b"filename" in options else None
        )
        self._part = (field, filename)
        count = self.files_per_field.get(field, 0) + 1
        self.files_per_field[field] = count
        self.parts += 1
        if count > self.max_files:
            raise BodyTooLarge(
                f"more than {self.max_files} files in field {field!r}; at most {self.max_files} "
                "per request"
            )
        if self.parts > self.max_parts:
            raise BodyTooLarge(f"more than {self.max_parts} parts in one request")

    def _data(self, data: bytes, start: int, end: int) -> None:
        self._part_bytes += end - start
        if (
            self._part is not None
            and self._part[1] is not None
            and self._part_bytes > self.max_file_bytes
        ):
            name = self._part[1].replace("\\", "/").rsplit("/", 1)[-1] or self._part[0]
            raise BodyTooLarge(
                f"{name}: larger than the {_mib(self.max_file_bytes)} limit per file", file=name
            )


class BodyLimit:
    """ASGI middleware: 413 for bodies, files or file counts over the limits (see module
    docstring)."""

    def __init__(
        self, app, max_request_bytes: int, max_file_bytes: int, max_files: Callable[[str], int]
    ) -> None:
        self.app = app
        self.max_request_bytes = max_request_bytes
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files  # path -> files accepted per field

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers: dict[bytes, bytes] = {}
        for key, value in (
            scope.get("headers") or []
        ):  # the first of repeated headers, as Starlette reads them
            headers.setdefault(key.lower(), value)
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_request_bytes:
            return await _reply_413(
                send,
                f"request body of {int(length)} bytes exceeds the {self.max_request_bytes}-byte "
                "limit",
            )
        counter = self._multipart_counter(headers.get(b"content-type", b""), scope.get("path", ""))
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                received += len(body)
                if received > self.max_request_bytes:
                    raise BodyTooLarge(
                        f"request body exceeds the {self.max_request_bytes}-byte limit"
                    )
                if counter is not None and body:
                    counter.feed(body)
            return message

        await self.app(scope, limited_receive, send)

    def _multipart_counter(self, content_type: bytes, path: str) -> MultipartCounter | None:
        kind, options = parse_options_header(content_type)
        if kind != b"multipart/form-data" or b"boundary" not in options:
            return None
        return MultipartCounter(options[b"boundary"], self.max_file_bytes, self.max_files(path))


async def _reply_413(send, message: str) -> None:
    body = json.dumps({"error": {"code": "payload_too_large", "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
