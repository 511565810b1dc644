"""The README's console picture: the sample screws' adapted version reviewed against the active one.

    python -m benchmarks.console_picture [--out docs/console-review.jpg]

Starts the service on a free port with an empty model store, fits the sample product
(docs/sample/screws), lets the line score fresh screws under the new light, adapts from the
new-lighting batch (kept for review), then opens the console in headless Chromium (the Debian
packages chromium and chromium-driver), reviews v2 against v1 on the line's recent images and
saves the page as JPEG.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

SAMPLE = Path(__file__).resolve().parents[1] / "docs" / "sample" / "screws"


def files(paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]


def wait_for(client: httpx.Client, job_id: str) -> dict:
    job = client.get(f"/v1/jobs/{job_id}", params={"wait": 600}).json()
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job_id} ended {job['status']}: {job['error']}")
    return job


def prepare(url: str) -> None:
    with httpx.Client(base_url=url, timeout=900) as client:
        fit = client.post(
            "/v1/models/screws/fit",
            files=files(sorted((SAMPLE / "train/good").glob("*.jpg"))),
            data={"image_size": "576x224"},
        )
        wait_for(client, fit.json()["job_id"])
        line = sorted((SAMPLE / "new-lighting/test").glob("*/*.jpg"))
        for start in range(0, len(line), 5):
            client.post("/v1/models/screws/score", files=files(line[start : start + 5]))
        adapt = client.post(
            "/v1/models/screws/adapt",
            files=files(sorted((SAMPLE / "new-lighting/batch").glob("*.jpg"))),
            data={"activate": "false"},
        )
        wait_for(client, adapt.json()["job_id"])


def picture(url: str, out: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1100"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(url + "/")
        wait = WebDriverWait(driver, 120)
        wait.until(ec.element_to_be_clickable((By.LINK_TEXT, "screws"))).click()
        wait.until(
            ec.element_to_be_clickable((By.CSS_SELECTOR, "button[data-review='v2']"))
        ).click()
        wait.until(ec.element_to_be_clickable((By.ID, "review-recent"))).click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#review-table tbody tr")) == 20)
        driver.execute_script("document.getElementById('review').scrollIntoView()")
        time.sleep(1)  # let the overlays paint before the picture
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    Image.open(io.BytesIO(png)).convert("RGB").save(out, "JPEG", quality=80, optimize=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.console_picture",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="docs/console-review.jpg")
    args = parser.parse_args(argv)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as models:
        env = {**os.environ, "PATCHSHIFT_MODELS_DIR": models, "PATCHSHIFT_PORT": str(port)}
        server = subprocess.Popen(
            [sys.executable, "-m", "patchshift.service.cli", "serve"], env=env
        )
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            prepare(url)
            picture(url, Path(args.out))
        finally:
            server.terminate()
            server.wait(30)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
