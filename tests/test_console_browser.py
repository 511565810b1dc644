"""The operator console in a real headless Chromium (the distribution's chromium and chromedriver,
driven by Selenium; nothing is downloaded) against the real server on 127.0.0.1.

Screenshots of every step go to test-output/console/ (git-ignored): look at them. Where the browser
is not installed the tests skip, unless PATCHSHIFT_REQUIRE_BROWSER=1 (CI sets it) makes that a
failure.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from service_helpers import Server

CHROMIUM, CHROMEDRIVER = (
    shutil.which("chromium") or shutil.which("chromium-browser"),
    shutil.which("chromedriver"),
)
SHOTS = Path(__file__).resolve().parent.parent / "test-output" / "console"
ADMIN, READER = "admin-key-for-console", "read-key-for-console"

if not (CHROMIUM and CHROMEDRIVER):
    if os.environ.get("PATCHSHIFT_REQUIRE_BROWSER") == "1":
        raise RuntimeError(
            "the browser tests need chromium and chromedriver (apt-get install chromium "
            "chromium-driver)"
        )
    pytest.skip("chromium and chromedriver are not installed", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


@pytest.fixture()
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        "--disable-gpu",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture()
def server(tmp_path: Path, saved_model: Path):
    models = tmp_path / "models"
    shutil.copytree(saved_model, models / "widget" / "v1")
    running = Server(
        models, env={"PATCHSHIFT_ADMIN_KEY": ADMIN, "PATCHSHIFT_READ_KEY": READER}
    ).start()
    yield running
    running.stop()


def shot(driver, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def wait(driver, seconds: float = 60) -> WebDriverWait:
    """Waits that look again when the page re-rendered the element being read (stale)."""
    return WebDriverWait(driver, seconds, ignored_exceptions=(StaleElementReferenceException,))


def sign_in(driver, server: Server, key: str) -> None:
    driver.get(server.url + "/")
    wait(driver).until(ec.visibility_of_element_located((By.ID, "key-input"))).send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#key-entry button").click()
    wait(driver).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "#models tr[data-model='widget']"))
    )


def active_version(driver) -> str:
    return driver.find_element(By.CSS_SELECTOR, "#versions tr.active").get_attribute("data-version")


def test_inspect_adapt_activate_and_roll_back_in_the_browser(browser, server, dataset):
    driver = browser
    with server.client(ADMIN) as line:  # the line has been scoring for a while
        for start in range(0, 8, 4):
            files = [
                ("files", (p.name, p.read_bytes(), "image/png"))
                for p in sorted((dataset / "train" / "good").glob("*.png"))[start : start + 4]
            ]
            assert line.post("/v1/models/widget/score", files=files).status_code == 200
    sign_in(driver, server, ADMIN)
    assert "admin key" in driver.find_element(By.ID, "scope").text
    cells = [
        td.text
        for td in driver.find_elements(By.CSS_SELECTOR, "#models tr[data-model='widget'] td")
    ]
    assert cells[0] == "widget" and cells[1] == "v1" and "8" in cells  # 8 line images scored
    shot(driver, "01-models")
    driver.find_element(By.LINK_TEXT, "widget").click()
    wait(driver).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "#versions tr[data-version='v1']"))
    )
    assert active_version(driver) == "v1"
    assert (
        "8 recent scores by v1"
        in driver.find_element(By.CSS_SELECTOR, "#score-histogram figcaption").text
    )
    assert (
        len(driver.find_elements(By.CSS_SELECTOR, "#recent-images img")) == 8
    )  # what the line saw, newest first
    shot(driver, "01b-model")

    probes = [
        str(p)
        for p in sorted((dataset / "test" / "good").glob("*.png"))[:1]
        + sorted((dataset / "test" / "blob").glob("*.png"))[:1]
    ]
    driver.find_element(By.ID, "inspect-files").send_keys("\n".join(probes))
    driver.find_element(By.ID, "inspect-start").click()
    wait(driver).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#inspect-results figure")) == 2
    )
    verdicts = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#inspect-results .verdict")]
    assert all(v.startswith(("OK", "DEFECT")) for v in verdicts), (
        verdicts
    )  # in words, not colour alone
    images = driver.find_elements(By.CSS_SELECTOR, "#inspect-results img")
    assert len(images) == 2 and all(
        driver.execute_script("return arguments[0].naturalWidth", i) > 0 for i in images
    )
    assert "Of the 2 images inspected here" in driver.find_element(By.ID, "threshold-preview").text
    shot(driver, "02-inspected")

    targets = [str(p) for p in sorted((dataset / "train" / "good").glob("*.png"))[:6]]
    driver.find_element(By.ID, "adapt-files").send_keys("\n".join(targets))
    driver.find_element(By.CSS_SELECTOR, "#adapt-method option[value='bn-stats']").click()
    driver.find_element(By.CSS_SELECTOR, "#adapt-activate option[value='false']").click()
    driver.find_element(By.ID, "adapt-start").click()
    wait(driver).until(ec.presence_of_element_located((By.ID, "job-progress")))
    shot(driver, "03-adapting")
    wait(driver, 180).until(ec.presence_of_element_located((By.ID, "adapt-result")))
    assert "not activated" in driver.find_element(By.ID, "adapt-result").text
    # 6 images cannot support a 1% threshold: the console says what the new one is expected to flag,
    # and that
    assert "expected to flag" in driver.find_element(By.ID, "threshold-estimate").text
    assert "cannot support" in driver.find_element(By.ID, "threshold-estimate").text
    shot(driver, "04-adapted")
    wait(driver).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "#versions tr[data-version='v2']"))
    )

    driver.find_element(
        By.ID, "adapt-review"
    ).click()  # the candidate against the live version, on the images inspected above
    driver.find_element(By.ID, "review-start").click()
    wait(driver, 120).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#review-table tbody tr")) == 2
    )
    strips = [
        e.get_attribute("aria-label")
        for e in driver.find_elements(By.CSS_SELECTOR, "#review svg.strip")
    ]
    assert (
        len(strips) == 2
        and strips[0].startswith("v1 (active)")
        and strips[1].startswith("v2 (candidate)")
    ), strips
    assert len(driver.find_elements(By.CSS_SELECTOR, "#review-table img")) == 4
    driver.execute_script("document.getElementById('review').scrollIntoView()")
    shot(driver, "04b-review")
    driver.find_element(
        By.ID, "review-recent"
    ).click()  # the same comparison on the 8 images the line sent
    wait(driver, 120).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#review-table tbody tr")) == 8
    )
    assert len(driver.find_elements(By.CSS_SELECTOR, "#review-table img")) == 16
    shot(driver, "04c-review-line")
    for width, height in (
        (1366, 768),
        (1920, 1080),
    ):  # a laptop and a control-room monitor: nothing runs off the side
        driver.set_window_size(width, height)
        overflow = driver.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"the page is {overflow} px wider than a {width}x{height} window"
        shot(driver, f"04d-review-{width}x{height}")
    driver.set_window_size(1400, 1000)
    driver.find_element(By.ID, "review-activate").click()
    driver.switch_to.alert.accept()
    wait(driver).until(lambda d: active_version(d) == "v2")
    shot(driver, "05-activated")
    driver.find_element(
        By.CSS_SELECTOR, "#versions tr[data-version='v1'] button[data-action='activate']"
    ).click()
    driver.switch_to.alert.accept()
    wait(driver).until(lambda d: active_version(d) == "v1")
    shot(driver, "06-rolled-back")
    with server.client(ADMIN) as client:  # the page's view is the service's
        assert client.get("/v1/models/widget").json()["active_version"] == "v1"


def test_a_read_key_sees_no_admin_controls_and_a_forged_admin_call_is_refused(
    browser, server, dataset
):
    driver = browser
    sign_in(driver, server, READER)
    assert "read-only" in driver.find_element(By.ID, "scope").text
    driver.find_element(By.LINK_TEXT, "widget").click()
    wait(driver).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "#versions tr[data-version='v1']"))
    )
    for admin_only in ("adapt-start", "threshold-save", "known-good-start", "checked-calibrate"):
        assert not driver.find_elements(By.ID, admin_only), admin_only
    assert not driver.find_elements(By.CSS_SELECTOR, ".check-good, .check-defective")
    wait(driver).until(  # what the verdicts do on checked parts: read keys see it too
        lambda d: "Checked on the line, v1" in d.find_element(By.ID, "checked-summary").text
    )
    assert not driver.find_elements(By.CSS_SELECTOR, "button[data-action]")
    status = driver.execute_async_script(
        "const done = arguments[0];"
        "fetch('/v1/models/widget/versions/v1/activate', "
        "{method: 'POST', headers: "
        "{Authorization: 'Bearer ' + sessionStorage.getItem('patchshift-key')}})"
        ".then(r => done(r.status));"
    )
    assert status == 403
    bad = Path(driver.execute_script("return 1") and dataset.parent / "not-an-image.png")
    bad.write_text("this is text, not a picture")
    driver.find_element(By.ID, "inspect-files").send_keys(str(bad))
    driver.find_element(By.ID, "inspect-start").click()
    message = wait(driver).until(ec.presence_of_element_located((By.ID, "inspect-error"))).text
    assert "not-an-image.png" in message, message  # the API's own message, naming the file
    shot(driver, "07-read-key")


def test_a_threshold_from_known_good_images_and_from_parts_checked_on_the_line(
    browser, server, dataset
):
    driver = browser
    with server.client(ADMIN) as line:  # six good parts, then a defective one, on the line
        paths = sorted((dataset / "train" / "good").glob("*.png"))[:6]
        paths += sorted((dataset / "test" / "blob").glob("*.png"))[:1]
        for start in range(0, 7, 4):
            files = [
                ("files", (p.name, p.read_bytes(), "image/png")) for p in paths[start : start + 4]
            ]
            assert line.post("/v1/models/widget/score", files=files).status_code == 200
        scores = line.get("/v1/models/widget/history").json()["recent_images"]
    sign_in(driver, server, ADMIN)
    driver.find_element(By.LINK_TEXT, "widget").click()
    wait(driver).until(ec.presence_of_element_located((By.ID, "known-good-start")))
    good = [str(p) for p in sorted((dataset / "train" / "good").glob("*.png"))[:6]]
    driver.find_element(By.ID, "known-good-files").send_keys("\n".join(good))
    driver.find_element(By.ID, "known-good-start").click()
    result = wait(driver).until(
        lambda d: (
            "v2 (from v1)" in d.find_element(By.ID, "known-good-result").text
            and d.find_element(By.ID, "known-good-result")
        )
    )
    # the version's own note: what it is expected to flag, from how many images, and how sure
    assert "highest of 6 known-good images" in result.text and "cannot support" in result.text
    row = driver.find_element(By.CSS_SELECTOR, "#versions tr[data-version='v2']")
    assert "threshold-known-good" in row.text
    assert active_version(driver) == "v1"  # written, not activated
    shot(driver, "09-known-good-threshold")

    # the line's parts, checked under their images: the summary is the active version's
    wait(driver).until(
        lambda d: "0 part(s) checked good" in d.find_element(By.ID, "checked-summary").text
    )
    figures = driver.find_elements(By.CSS_SELECTOR, "#recent-images figure")
    assert len(figures) == 7  # newest first: the defective part is the first
    figures[0].find_element(By.CLASS_NAME, "check-defective").click()
    for figure in figures[1:]:
        figure.find_element(By.CLASS_NAME, "check-good").click()
    summary = wait(driver).until(
        lambda d: (
            "of 6 good parts" in d.find_element(By.ID, "checked-summary").text
            and d.find_element(By.ID, "checked-summary")
        )
    )
    threshold = next(r["threshold"] for r in scores)
    flagged_good = sum(r["score"] > threshold for r in scores[1:])
    caught = int(scores[0]["score"] > threshold)
    assert f"flags {flagged_good} of 6 good parts" in summary.text, summary.text
    assert f"{caught} of 1 defective parts" in summary.text, summary.text
    assert "Calibrating from them would set" in summary.text  # 6 good: enough to set one
    assert figures[0].find_element(By.CLASS_NAME, "checked").text == "checked: defective"
    shot(driver, "10-checked-parts")
    driver.find_element(By.ID, "checked-calibrate").click()
    result = wait(driver).until(
        lambda d: (
            "v3 (from v1, 6 parts checked good on the line)"
            in d.find_element(By.ID, "known-good-result").text
            and d.find_element(By.ID, "known-good-result")
        )
    )
    # at 1% from 6 good parts: the highest of their scores, as the line scored them
    highest = max(r["score"] for r in scores[1:])
    assert f"→ {highest:.3f}" in result.text and "highest of 6 known-good images" in result.text
    assert active_version(driver) == "v1"
    shot(driver, "11-threshold-from-checked-parts")

    # a candidate reviewed on the line's parts, checked there: each check kept for both versions
    wait(driver).until(
        ec.element_to_be_clickable((By.CSS_SELECTOR, "#versions button[data-review='v2']"))
    ).click()
    wait(driver).until(ec.element_to_be_clickable((By.ID, "review-recent"))).click()
    rows = wait(driver).until(
        lambda d: (
            d.find_elements(By.CSS_SELECTOR, "#review-table tbody tr")
            if len(d.find_elements(By.CSS_SELECTOR, "#review-table tbody tr .check-good")) == 7
            else False
        )
    )
    rows[0].find_element(By.CLASS_NAME, "check-defective").click()
    for row in rows[1:]:
        row.find_element(By.CLASS_NAME, "check-good").click()
    wait(driver).until(
        lambda d: all(
            e.text for e in d.find_elements(By.CSS_SELECTOR, "#review-table .review-check .checked")
        )
    )
    driver.execute_script("document.getElementById('review-table').scrollIntoView()")
    shot(driver, "12-checked-in-review")
    with server.client(ADMIN) as line:
        # the same snapshot scored again: what the page showed for each version
        images = line.post("/v1/models/widget/versions/v2/review").json()["images"]
        v2 = line.get("/v1/models/widget/versions/v2/checked-parts").json()
        v1 = line.get("/v1/models/widget/versions/v1/checked-parts").json()
    candidate = [i["candidate"] for i in images]
    assert v2["false_alarms"]["count"] == 6 and v2["recall"]["count"] == 1, v2
    assert v2["false_alarms"]["flagged"] == sum(c["anomalous"] for c in candidate[1:]), v2
    assert v2["recall"]["flagged"] == int(candidate[0]["anomalous"]), (v2, candidate)
    assert sorted(p["score"] for p in v2["parts"]) == sorted(c["score"] for c in candidate)
    # the active version's checks are the same parts as those checked under the thumbnails
    assert v1["false_alarms"]["count"] == 6 and v1["recall"]["count"] == 1, v1
    Select(driver.find_element(By.ID, "known-good-version")).select_by_value("v2")
    wait(driver).until(
        lambda d: (
            "of 6 good parts" in d.find_element(By.ID, "checked-summary").text
            and "v2" in d.find_element(By.ID, "checked-summary").text
        )
    )
    shot(driver, "13-candidate-checked")


def test_a_first_model_is_fitted_from_the_page(browser, tmp_path, dataset):
    server = Server(
        tmp_path / "empty-models"
    ).start()  # no keys: the page has full access and says so
    try:
        driver = browser
        driver.get(server.url + "/")
        wait(driver).until(
            ec.text_to_be_present_in_element((By.ID, "scope"), "no API keys configured")
        )
        assert "No models yet" in driver.find_element(By.ID, "view").text
        driver.find_element(By.ID, "fit-name").send_keys("gadget")
        driver.find_element(By.ID, "fit-files").send_keys(
            "\n".join(str(p) for p in sorted((dataset / "train" / "good").glob("*.png"))[:8])
        )
        size = driver.find_element(By.ID, "fit-size")
        size.clear()
        size.send_keys("64")
        driver.find_element(By.ID, "fit-start").click()
        wait(driver, 180).until(
            ec.presence_of_element_located((By.CSS_SELECTOR, "#models tr[data-model='gadget']"))
        )
        rows = driver.find_elements(
            By.CSS_SELECTOR, "#jobs tbody tr"
        )  # every model's jobs, on the models list
        assert len(rows) == 1 and "gadget" in rows[0].text and "succeeded" in rows[0].text, [
            r.text for r in rows
        ]
        shot(driver, "08-fitted")
        driver.find_element(By.LINK_TEXT, "gadget").click()
        wait(driver).until(lambda d: active_version(d) == "v1")
    finally:
        server.stop()
