"""Parts a person checked on the line: the measured shares by hand, the routes on each database,
calibrating from the good ones, forgetting a deleted version's checks, and concurrent checks."""

from __future__ import annotations

import json
import threading

import pytest

from patchshift.core.engine.recalibration import (
    judged_false_alarms,
    known_good_threshold,
    observed_share,
)

URL = "/v1/models/widget/versions/{version}/checked-parts"


def test_observed_shares_carry_their_exact_intervals() -> None:
    assert observed_share(0, 0) == (None, None)
    # none of 10 flagged: the upper end solves (1 - p)^10 = 0.05
    share, (low, high) = observed_share(0, 10)
    assert (share, low) == (0.0, 0.0) and high == pytest.approx(1 - 0.05 ** (1 / 10))
    # all of 10: the mirror image
    share, (low, high) = observed_share(10, 10)
    assert (share, high) == (1.0, 1.0) and low == pytest.approx(0.05 ** (1 / 10))
    # 1 of 2: Beta(1, 2) has CDF 1 - (1 - x)^2 and Beta(2, 1) has CDF x^2
    share, (low, high) = observed_share(1, 2)
    assert share == 0.5
    assert low == pytest.approx(1 - 0.95**0.5) and high == pytest.approx(0.95**0.5)


def test_checks_tell_when_a_version_flags_more_than_twice_the_asked_rate() -> None:
    # none of 149 flagged: the upper end 1 - 0.05^(1/149) = 1.99% is within 2 x 1%; of 148, 2.004%
    assert judged_false_alarms(0, 149, 0.01).verdict == "within"
    assert judged_false_alarms(0, 148, 0.01).verdict == "open"
    # 1 of 2: the lower end 1 - 0.95^0.5 = 2.53%, above 2 x 1% but not above 2 x 1.3%
    above = judged_false_alarms(1, 2, 0.01)
    assert above.verdict == "above" and "more than 2 times the 1.0% asked" in above.note
    assert judged_false_alarms(1, 2, 0.013).verdict == "open"
    assert judged_false_alarms(0, 0, 0.01).verdict == "open"  # nothing checked
    assert judged_false_alarms(1, 2, 0.0).verdict == "open"  # nothing asked to keep
    assert judged_false_alarms(2, 2, 0.5).verdict == "open"  # twice 50%: no bound at all


def threshold(client, version: str = "v1") -> float:
    versions = client.get("/v1/models/widget").json()["versions"]
    return next(v["threshold"] for v in versions if v["version"] == version)


def parts(*checks: tuple[str, float, bool]) -> dict:
    return {"parts": [{"part": p, "score": s, "good": g} for p, s, g in checks]}


def test_checks_say_what_the_verdicts_do_and_a_second_check_replaces_the_first(client) -> None:
    t = threshold(client)
    answer = client.post(
        URL.format(version="v1"),
        json=parts(
            ("a.png", t - 1.0, True),
            ("b.png", t - 0.5, True),
            ("c.png", t - 0.1, True),
            ("d.png", t + 0.2, True),  # a false alarm
            ("e.png", t + 3.0, False),  # caught
            ("f.png", t + 0.1, False),  # caught
            ("g.png", t - 0.3, False),  # missed
        ),
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["threshold"] == t and body["false_alarm_rate"] == pytest.approx(0.01)
    assert (body["false_alarms"]["count"], body["false_alarms"]["flagged"]) == (4, 1)
    assert body["false_alarms"]["share"] == 0.25
    assert body["false_alarms"]["interval"] == pytest.approx(list(observed_share(1, 4)[1]))
    assert (body["recall"]["count"], body["recall"]["flagged"]) == (3, 2)
    assert body["calibration"] is None and "4 part(s) checked good" in body["calibration_note"]
    assert {p["part"]: p["flagged"] for p in body["parts"]}["d.png"] is True
    # 1 of 4: the interval 1.3% to 75.1% spans twice the asked 1%
    assert body["false_alarm_check"]["verdict"] == "open"
    assert "1 of 4 parts checked good" in body["false_alarm_check"]["note"]
    # the person looks again: d.png was defective after all (named twice: the last one counts)
    again = parts(("d.png", t + 0.2, True), ("d.png", t + 0.2, False))
    assert client.post(URL.format(version="v1"), json=again).status_code == 200
    body = client.get(URL.format(version="v1")).json()
    assert (body["false_alarms"]["count"], body["false_alarms"]["flagged"]) == (3, 0)
    assert (body["recall"]["count"], body["recall"]["flagged"]) == (4, 3)
    assert len(body["parts"]) == 7
    # the counter counts first checks: the correction changed the stored check, not the count
    counted = {
        line.split("{")[1].split("}")[0]: float(line.split()[-1])
        for line in client.get("/metrics").text.splitlines()
        if line.startswith("patchshift_part_checks_total{")
    }
    series = 'found="{}",model="widget",verdict="{}",version="v1"'
    assert counted == {
        series.format("good", "flagged"): 1.0,
        series.format("good", "passed"): 3.0,
        series.format("defective", "flagged"): 2.0,
        series.format("defective", "passed"): 1.0,
    }
    # 3 good parts flagged of 6: surely more than twice the asked 1% (interval from 15.3%)
    flagged = parts(*((f"h{i}.png", t + 1.0, True) for i in range(3)))
    body = client.post(URL.format(version="v1"), json=flagged).json()
    assert (body["false_alarms"]["count"], body["false_alarms"]["flagged"]) == (6, 3)
    assert body["false_alarm_check"]["verdict"] == "above", body["false_alarm_check"]


REFUSED = [
    ("v9", parts(("a", 1.0, True)), 404, "v9"),
    ("v1", {"parts": []}, 422, "parts"),
    ("v1", parts(("", 1.0, True)), 422, "part"),
    ("v1", parts(("a" * 201, 1.0, True)), 422, "part"),
    ("v1", parts(("a\x00b", 1.0, True)), 422, "part"),
    ("v1", '{"parts": [{"part": "a", "score": NaN, "good": true}]}', 422, "score"),
    ("v1", '{"parts": [{"part": "a", "score": 1.0}]}', 422, "good"),
    ("v1", '{"parts": [{"part": "a", "score": 1.0, "good": 1}]}', 422, "good"),
]


def test_checks_that_cannot_be_kept_are_refused(client) -> None:
    for version, body, status, message in REFUSED:
        url = URL.format(version=version)
        if isinstance(body, str):
            answer = client.post(url, content=body, headers={"content-type": "application/json"})
        else:
            answer = client.post(url, json=body)
        assert answer.status_code == status, (body, answer.text)
        assert message in json.dumps(answer.json()), body
    assert client.get(URL.format(version="v1")).json()["false_alarms"]["count"] == 0


def test_a_threshold_from_the_parts_checked_good_on_the_line(client) -> None:
    calibrate = "/v1/models/widget/versions/v1/calibrate"
    client.post(URL.format(version="v1"), json=parts(*((f"{i}", float(i), True) for i in range(4))))
    answer = client.post(calibrate, data={"from_checked_parts": "true"})
    assert answer.status_code == 422
    assert "4 part(s) checked good on the line for widget v1" in answer.text
    # 20 good scores 1..20 (and defective ones, which are not used) at 10%: the conformal rank
    # ceil(21 * 0.9) = 19, the score 19
    good = [(f"good-{i}", float(i), True) for i in range(1, 21)]
    client.post(URL.format(version="v1"), json=parts(*good, ("bad", 0.5, False)))
    client.post(URL.format(version="v1"), json=parts(*((f"{i}", 100.0, False) for i in range(4))))
    summary = client.get(URL.format(version="v1")).json()  # at the version's 1%: the highest
    assert summary["calibration"]["threshold"] == 20.0
    assert "highest of 20" in summary["calibration"]["note"]
    answer = client.post(calibrate, data={"from_checked_parts": "true", "false_alarm_rate": "0.1"})
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["threshold"] == 19.0 == known_good_threshold(range(1, 21), 0.1).value
    assert (body["version"], body["known_good_images"]) == ("v2", 20)
    assert body["known_good_source"] == "parts checked on the line"
    model = client.get("/v1/models/widget").json()
    assert model["active_version"] == "v1"  # a person activates it
    v2 = next(v for v in model["versions"] if v["version"] == "v2")
    assert (
        v2["threshold"] == 19.0 and v2["details"]["known_good_source"] == body["known_good_source"]
    )
    # images and checked parts at once, or neither: refused
    files = [("files", ("x.png", b"\x89PNG", "image/png"))]
    both = client.post(calibrate, data={"from_checked_parts": "true"}, files=files)
    neither = client.post(calibrate, data={"false_alarm_rate": "0.1"})
    for answer in (both, neither):
        assert answer.status_code == 422 and "not both and not neither" in answer.text
    assert [v["version"] for v in client.get("/v1/models/widget").json()["versions"]] == [
        "v1",
        "v2",
    ]


def test_every_series_of_the_active_version_starts_at_zero(client) -> None:
    """So that a dashboard's rate sees the first check (a series born at 1 shows no increase)."""
    zero = [
        line
        for line in client.get("/metrics").text.splitlines()
        if line.startswith("patchshift_part_checks_total{") and 'version="v1"' in line
    ]
    assert len(zero) == 4 and all(line.endswith(" 0.0") for line in zero)


def test_checks_of_another_version_of_the_same_name_are_not_read(client) -> None:
    """A model deleted and made again starts from v1: checks written for the old v1 (a request
    racing the deletion) stay unread, and a version asking for a 0% rate still gets its summary."""
    checked, store = client.app.state.checked_parts, client.app.state.store
    checked.record("widget", "v1", "an-older-v1", [("a", 1.0, True), ("b", 2.0, False)])
    summary = client.get(URL.format(version="v1")).json()
    assert summary["false_alarms"]["count"] == summary["recall"]["count"] == 0
    # the same part checked for today's v1 is a first check, and replaces the stale row
    new = checked.record("widget", "v1", store.identity("widget", "v1"), [("a", 3.0, True)])
    assert new == [(3.0, True)]
    assert client.get(URL.format(version="v1")).json()["false_alarms"]["count"] == 1
    # a version that asks for no false alarms: no threshold from checks, said in words
    assert client.put("/v1/models/widget/threshold", json={"threshold": 3.0}).status_code == 200
    manifest = store.version_dir("widget", "v2") / "manifest.json"
    raw = json.loads(manifest.read_text())
    raw["config"]["false_alarm_rate"] = 0.0
    manifest.write_text(json.dumps(raw))
    good = parts(*((f"p{i}", float(i), True) for i in range(6)))
    answer = client.post(URL.format(version="v2"), json=good)
    assert answer.status_code == 200, answer.text
    assert answer.json()["calibration"] is None
    assert "asks for a 0% false-alarm rate" in answer.json()["calibration_note"]


def test_a_deleted_version_or_model_takes_its_checks_along(client) -> None:
    checked, store = client.app.state.checked_parts, client.app.state.store
    v1 = store.identity("widget", "v1")
    assert client.put("/v1/models/widget/threshold", json={"threshold": 3.0}).status_code == 200
    for version in ("v1", "v2"):
        client.post(URL.format(version=version), json=parts(("a", 1.0, True)))
    assert client.post("/v1/models/widget/versions/v1/activate").status_code == 200
    v2 = store.identity("widget", "v2")
    assert client.delete("/v1/models/widget/versions/v2").status_code == 204
    assert checked.of("widget", "v2", v2) == [] and len(checked.of("widget", "v1", v1)) == 1
    assert client.delete("/v1/models/widget").status_code == 204
    assert checked.of("widget", "v1", v1) == []
    assert "patchshift_part_checks_total{" not in client.get("/metrics").text


def test_concurrent_checks_of_the_same_parts_keep_one_row_each(client) -> None:
    """Eight threads check the same ten parts at once (upserts on one key): no error, ten rows, each
    holding one thread's whole check."""
    checked = client.app.state.checked_parts
    identity = client.app.state.store.identity("widget", "v1")
    errors: list[BaseException] = []

    def check(thread: int) -> None:
        order = range(10) if thread % 2 else range(9, -1, -1)  # half of them in reverse
        try:
            for _ in range(5):
                checked.record(
                    "widget",
                    "v1",
                    identity,
                    [(f"p{i}", float(thread), thread % 2 == 0) for i in order],
                )
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=check, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = checked.of("widget", "v1", identity)
    assert sorted(r.part for r in rows) == sorted(f"p{i}" for i in range(10))
    assert all(r.good == (int(r.score) % 2 == 0) for r in rows)
