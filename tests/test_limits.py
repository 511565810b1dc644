"""Every input bounded however it arrives (body, files, parts, pixels), no server paths in answers,
and an API contract that states its limits."""

from __future__ import annotations

import io
import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from service_helpers import (
    Server,
    files_field,
    named_bytes,
    png_bytes,
    png_header_only,
)

ADMIN = "admin-key-for-tests"


def test_one_pixel_limit_100_megapixels() -> None:
    from patchshift.core.common.errors import InvalidImageError
    from patchshift.core.common.images import MAX_PIXELS, decode_for_model

    assert MAX_PIXELS == 100_000_000
    frame = io.BytesIO()
    Image.new("L", (10_000, 10_000), 40).save(frame, "PNG", compress_level=1)
    model_input, original, preview = decode_for_model(
        frame.getvalue(), (96, 96), "frame.png", preview_side=512
    )
    assert (
        original == (10_000, 10_000)
        and model_input.shape == (96, 96, 3)
        and preview.shape == (512, 512, 3)
    )
    assert (model_input == 40).all()
    # just over the limit, and far over it (past Pillow's own bomb guard): our message, with the
    # limit
    for width, height in ((10_001, 10_000), (20_000, 20_000)):
        with pytest.raises(InvalidImageError, match="100 megapixels"):
            decode_for_model(png_header_only(width, height), (96, 96), "big.png")
    # between Pillow's 89.5 MP and ours: not refused for its size (this header has no pixel data)
    with pytest.raises(InvalidImageError, match="truncated or corrupt"):
        decode_for_model(png_header_only(9_500, 9_500), (96, 96), "camera.png")


def test_store_files_are_out_of_reach_of_model_names(store: Path, dataset: Path) -> None:
    """The default SQLite database lives in .state/, where no model name can reach."""
    from fastapi.testclient import TestClient

    from patchshift.service.app import create_app
    from patchshift.service.settings import Settings

    with TestClient(create_app(Settings(models_dir=store, device="cpu"))) as client:
        the_store_files_are_out_of_reach_of_model_names(client, store, dataset)


def the_store_files_are_out_of_reach_of_model_names(client, store: Path, dataset: Path) -> None:
    assert (store / ".state" / "jobs.sqlite").is_file() and not (store / "jobs.sqlite").exists()
    (store / "notes.txt").write_text("an operator's file")
    images = named_bytes(sorted((dataset / "train/good").glob("*.png"))[:3])
    response = client.post("/v1/models/notes.txt/fit", files=files_field(images))
    assert response.status_code == 400 and "taken by a file" in response.json()["error"]["message"]
    response = client.post("/v1/models/jobs.sqlite/fit", files=files_field(images))
    assert response.status_code == 202, (
        response.text
    )  # an ordinary name now: the database lives in .state/
    for name in ("a..b", "-x", "x" * 65, "bad$name"):
        response = client.get(f"/v1/models/{name}")
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_name", (
            name,
            response.text,
        )


def test_legacy_job_database_is_moved_out_of_the_name_space(store: Path) -> None:
    from patchshift.service.job_store import JobStore, move_legacy_database

    legacy = JobStore.open(store / "jobs.sqlite")
    legacy.create("fit", "widget", {"n_images": 3})
    legacy.close()
    target = store / ".state" / "jobs.sqlite"
    assert move_legacy_database(store, target) == store / "jobs.sqlite"
    assert not (store / "jobs.sqlite").exists() and len(JobStore.open(target).list()) == 1
    assert move_legacy_database(store, target) is None


def test_errors_never_show_server_paths() -> None:
    from patchshift.service.http_errors import redact_paths

    message = (
        "/srv/models/bsd/v3/manifest.json is invalid: field threshold; "
        "[Errno 17] File exists: '/srv/models/jobs.sqlite'"
    )
    assert (
        redact_paths(message)
        == "manifest.json is invalid: field threshold; [Errno 17] File exists: 'jobs.sqlite'"
    )
    assert (
        redact_paths("image_size must be N or WIDTHxHEIGHT, got 1/2 of 576x224")
        == "image_size must be N or WIDTHxHEIGHT, got 1/2 of 576x224"
    )


def test_openapi_describes_names_limits_errors_and_media_types(client) -> None:
    spec = client.get("/openapi.json").json()
    score = spec["paths"]["/v1/models/{name}/score"]["post"]
    name = next(p for p in score["parameters"] if p["name"] == "name")["schema"]
    assert name["maxLength"] == 64 and name["pattern"].startswith("^[A-Za-z0-9]")
    assert {"400", "401", "403", "404", "413", "422", "503"} <= set(score["responses"])
    body = spec["components"]["schemas"][
        score["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[-1]
    ]
    assert (
        body["properties"]["files"]["minItems"] == 1
        and body["properties"]["files"]["maxItems"] == 4
    )
    adapt = spec["paths"]["/v1/models/{name}/adapt"]["post"]
    adapt_body = json.dumps(spec["components"]["schemas"])
    assert '"exclusiveMinimum": 0.0' in adapt_body and "413" in adapt["responses"]
    metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert len(metrics) == 1 and next(iter(metrics)).startswith("text/plain; version=")
    threshold = spec["components"]["schemas"]["ThresholdIn"]["properties"]["threshold"]
    assert threshold["minimum"] == 1e-6 and threshold["maximum"] == 1e6


def test_multipart_counting_cannot_be_sidestepped(client) -> None:
    """A second Content-Type header (Starlette reads the first) or files under other field names
    still count against the limits."""
    import httpx

    image = png_bytes(np.full((96, 96, 3), 128, np.uint8))
    request = httpx.Request(
        "POST",
        "http://test/v1/models/widget/score",
        files=files_field([(f"{i}.png", image) for i in range(5)]),
    )
    body = request.read()
    headers = [("content-type", request.headers["content-type"]), ("content-type", "text/plain")]
    response = client.post("/v1/models/widget/score", content=body, headers=headers)
    # refused by the streaming count ("more than 4 files in field"), not after the body was spooled
    assert (
        response.status_code == 413
        and "more than 4 files in field 'files'" in response.json()["error"]["message"]
    )
    extra = files_field([("a.png", image)]) + [
        (f"other{i}", (f"{i}.png", b"x", "application/octet-stream")) for i in range(80)
    ]
    response = client.post("/v1/models/widget/score", files=extra)
    assert (
        response.status_code == 413
        and "parts in one request" in response.json()["error"]["message"]
    )


def test_405_names_every_allowed_method(client) -> None:
    for path, allowed in (
        ("/v1/jobs/abc", {"GET", "DELETE"}),
        ("/v1/models/widget", {"GET", "DELETE"}),
        ("/v1/models/widget/threshold", {"PUT"}),
        ("/docs", {"GET"}),
    ):
        response = client.patch(path)
        assert response.status_code == 405
        assert set(response.headers["allow"].split(", ")) == allowed, (
            path,
            response.headers["allow"],
        )


def test_api_docs_load_without_internet(client) -> None:
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200
        assert "http://" not in html.text and "https://" not in html.text, page
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        response = client.get(f"/docs-assets/{asset}")
        assert response.status_code == 200 and len(response.content) > 10_000


def send_chunked(
    port: int, path: str, boundary: str, parts: list[tuple[str, str, int]], chunk: int = 64 * 1024
) -> tuple[int, dict, int, int]:
    """POST a multipart body with Transfer-Encoding: chunked, stopping as soon as the server
    answers.

    parts: (field, filename, size in bytes of zeros). Returns (status, error body, bytes sent, body
    size)."""
    pieces = []
    for field, filename, size in parts:
        pieces.append(
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
        )
        pieces.append(b"\0" * size)
        pieces.append(b"\r\n")
    pieces.append(f"--{boundary}--\r\n".encode())
    body = b"".join(pieces)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
    ).encode()
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        try:
            while sent < len(body):
                piece = body[sent : sent + chunk]
                sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
                sent += len(piece)
                sock.settimeout(0.02)
                try:
                    peeked = sock.recv(1, socket.MSG_PEEK)
                except (TimeoutError, BlockingIOError):
                    peeked = b""
                sock.settimeout(30)
                if peeked:
                    break
            else:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.settimeout(30)
        answer = b""
        try:
            while b"\r\n\r\n" not in answer or len(answer) < answer.index(b"\r\n\r\n") + 4 + int(
                next(
                    (
                        line.split(b":")[1]
                        for line in answer.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    b"0",
                )
            ):
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except ConnectionResetError:
            pass
    status = int(answer.split(b" ", 2)[1])
    error = json.loads(answer.split(b"\r\n\r\n", 1)[1] or b"{}")
    return status, error, sent, len(body)


def test_limits_hold_for_chunked_bodies(tmp_path: Path, saved_model: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(saved_model, models / "widget" / "v1")
    env = {
        "PATCHSHIFT_MAX_REQUEST_BYTES": str(3 * 1024 * 1024),
        "PATCHSHIFT_MAX_FILE_BYTES": str(1024 * 1024),
        "PATCHSHIFT_MAX_FILES": "4",
    }
    server = Server(models, env=env).start()
    try:
        # the whole body over the request limit (no single file over its limit): refused while
        # arriving
        parts = [("files", f"{i}.png", 900 * 1024) for i in range(4)] + [
            ("source_files", f"s{i}.png", 900 * 1024) for i in range(4)
        ]
        status, error, sent, total = send_chunked(
            server.port, "/v1/models/widget/adapt", "b0undary", parts
        )
        assert status == 413 and "3145728-byte limit" in error["error"]["message"], error
        assert sent < total
        # one file over the per-file limit: refused at that file, named
        status, error, sent, total = send_chunked(
            server.port,
            "/v1/models/widget/score",
            "b0undary",
            [("files", "huge.png", 2 * 1024 * 1024)],
        )
        assert (
            status == 413
            and error["error"]["file"] == "huge.png"
            and "1 MiB limit per file" in error["error"]["message"]
        )
        assert sent < total
        # more files than the route takes
        status, error, _, _ = send_chunked(
            server.port,
            "/v1/models/widget/score",
            "b0undary",
            [("files", f"{i}.png", 10) for i in range(5)],
        )
        assert status == 413 and "at most 4 per request" in error["error"]["message"]
        with server.client() as client:  # the server is fine afterwards
            good = png_bytes(np.full((96, 96, 3), 128, np.uint8))
            assert (
                client.post(
                    "/v1/models/widget/score", files=files_field([("a.png", good)])
                ).status_code
                == 200
            )
    finally:
        server.stop()


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return (
        int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
        / 1024
    )


def test_worst_allowed_score_request_has_bounded_memory(tmp_path: Path, saved_model: Path) -> None:
    """PATCHSHIFT_MAX_FILES images of the largest accepted size (10000 x 10000 RGB), heatmaps on:
    the server's peak resident memory grows by less than 1.5 GiB (measured: README, "Limits")."""
    models = tmp_path / "models"
    shutil.copytree(saved_model, models / "widget" / "v1")
    files = 4
    server = Server(models, env={"PATCHSHIFT_MAX_FILES": str(files)}).start()
    try:
        frame = io.BytesIO()
        Image.new("RGB", (10_000, 10_000), (90, 90, 90)).save(frame, "PNG", compress_level=1)
        with server.client(timeout=300) as client:
            small = png_bytes(np.full((96, 96, 3), 128, np.uint8))
            assert (
                client.post(
                    "/v1/models/widget/score",
                    files=files_field([("a.png", small)]),
                    data={"heatmap": "png"},
                ).status_code
                == 200
            )
            before = peak_rss_mib(server.process.pid)
            response = client.post(
                "/v1/models/widget/score",
                files=files_field([(f"{i}.png", frame.getvalue()) for i in range(files)]),
                data={"heatmap": "png"},
            )
            assert response.status_code == 200, response.text[:300]
            growth = peak_rss_mib(server.process.pid) - before
            overlay = Image.open(
                io.BytesIO(
                    __import__("base64").b64decode(response.json()["results"][0]["heatmap_png"])
                )
            )
        assert overlay.size == (1024, 1024)  # PATCHSHIFT_HEATMAP_MAX_SIDE
        print(f"peak RSS growth for {files} x 100 MP with heatmaps: {growth:.0f} MiB")
        assert growth < 1536, growth
    finally:
        server.stop()
