"""Reading multipart uploads within the configured limits."""

from __future__ import annotations

from fastapi import UploadFile

from patchshift.service.http_errors import PayloadTooLarge, Unprocessable

CHUNK = 1024 * 1024


async def read_files(
    files: list[UploadFile] | None, max_files: int, max_file_bytes: int
) -> list[tuple[str, bytes]]:
    """(filename, bytes) of every upload; 422 for none, 413 for too many or too large."""
    if not files:
        raise Unprocessable("no images: send one or more files in the multipart field 'files'")
    if len(files) > max_files:
        raise PayloadTooLarge(f"{len(files)} files sent; at most {max_files} per request")
    out = []
    for i, upload in enumerate(files):
        name = (upload.filename or f"file{i}").replace("\\", "/").rsplit("/", 1)[-1] or f"file{i}"
        data = bytearray()
        while chunk := await upload.read(CHUNK):
            data += chunk
            if len(data) > max_file_bytes:
                raise PayloadTooLarge(
                    f"{name}: larger than the {max_file_bytes // (1024 * 1024)} MiB limit per file",
                    file=name,
                )
        out.append((name, bytes(data)))
    return out
