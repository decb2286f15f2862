"""The viewer at ``/`` and the API docs, in a real headless Chromium against ``pda serve``."""

from __future__ import annotations

import base64
import re

import pytest

from tests.support.paths import ARTIFACTS, CAT
from tests.support.ui import API_KEY, outside_requests

pytestmark = pytest.mark.slow

DROP_FILE = """async (b64) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], "chelsea.png", {type: "image/png"}));
  document.getElementById("drop").dispatchEvent(
    new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
}"""
# distinct colours in a canvas: a blank or one-colour map has 1
CANVAS_COLOURS = """(c) => {
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  const seen = new Set();
  for (let i = 0; i < d.length; i += 4) seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
  return seen.size;
}"""


def test_viewer_explains_the_cat_with_one_map_per_target(server, page):
    from playwright.sync_api import expect

    page.goto(f"{server.url}/")
    expect(page.locator("#model")).to_have_value("efficientnet_lite0")
    for field, default in {"window": "32", "stride": "8", "samples": "1", "sampler": "conditional",
                           "target": "top3", "layer": "output", "seed": "0"}.items():
        expect(page.locator(f"#{field}")).to_have_value(default)
    page.click("#paper")
    for field, value in {"window": "10", "stride": "1", "samples": "10", "padding": "2"}.items():
        expect(page.locator(f"#{field}")).to_have_value(value)
    expect(page.locator("#passes")).to_have_text(  # 215 * 215 * 10 + 1, and the scores' 290
        "462,541 forward passes (290 of them for the faithfulness scores)")
    page.click("#defaults")
    expect(page.locator("#window")).to_have_value("32")

    page.evaluate(DROP_FILE, base64.b64encode(CAT.read_bytes()).decode())
    expect(page.locator("#preview")).to_be_visible()
    # a problem document's detail is shown, and its field marked
    page.fill("#window", "300")
    page.click("#submit")
    expect(page.locator("#error")).to_contain_text("window 300 exceeds the image size 224x224")
    expect(page.locator("#window")).to_have_attribute("aria-invalid", "true")

    page.fill("#window", "32")
    page.fill("#stride", "32")
    page.fill("#samples", "2")
    # 7 x 7 windows x 2 + 1, and 2 + 2 x 24 x (3 targets + 3 random orders) for the scores
    expect(page.locator("#passes")).to_have_text(
        "389 forward passes (290 of them for the faithfulness scores)")
    page.click("#submit")
    expect(page.locator("#error")).to_be_hidden()
    # 389 passes: seconds at the nominal CPU rate, minutes on a loaded shared machine
    expect(page.locator("#status")).to_have_text("Finished", timeout=400_000)
    expect(page.locator("#progress-text")).to_contain_text("389 / 389 forward passes")

    expect(page.locator("#prediction li").first).to_contain_text("Egyptian cat")
    expect(page.locator("#input")).to_be_visible()
    maps = page.locator("#maps canvas")
    expect(maps).to_have_count(3)  # top3: one map per target
    for i in range(3):
        assert maps.nth(i).evaluate(CANVAS_COLOURS) > 20
    curves = page.locator("#maps svg.curves")  # deletion/insertion curves beside each map
    expect(curves).to_have_count(3)
    expect(curves.first).to_have_attribute("aria-label", re.compile(r"deletion AUC 0\.\d+"))
    expect(curves.first.locator("polyline")).to_have_count(4)
    expect(page.locator("#ticks")).to_contain_text("0")
    expect(page.locator("#unit")).to_contain_text("bits")

    maps.first.hover(position={"x": 100, "y": 60})
    expect(page.locator("#hover")).to_have_text(
        re.compile(r"Egyptian cat at \(x \d+, y \d+\): [+-]?\d[\d.e+-]* bits"))

    links = page.locator("#downloads a")
    expect(links).to_have_count(6)  # JSON, .npy, input, three overlays
    for i in range(6):
        href = links.nth(i).get_attribute("href")
        assert page.request.get(f"{server.url}{href}").status == 200, href

    # the page followed the job through its event stream, and never polled it
    assert [u for u in page.requests if u.endswith("/events")], page.requests
    assert not [u for u in page.requests if re.search(r"/v1/explanations/[\w-]+$", u)]

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "viewer.png"), full_page=True)
    assert outside_requests(page.requests) == []


def test_viewer_asks_for_the_api_key_and_cancels_a_running_job(keyed_server, page):
    from playwright.sync_api import expect

    page.goto(f"{keyed_server.url}/")
    expect(page.locator("#error")).to_contain_text("Unauthorized (401)")
    expect(page.locator("#apikey")).to_be_focused()
    page.fill("#apikey", API_KEY)
    page.click("#savekey")
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#model")).to_have_value("efficientnet_lite0")

    page.set_input_files("#image", str(CAT))
    # 8 samples: 5,001 + 290 forward passes (the default's 916 can end in a few seconds on
    # OpenVINO, close to the time the page needs to show progress and take the click)
    page.fill("#samples", "8")
    page.click("#submit")
    expect(page.locator("#progress-text")).to_contain_text(re.compile(r"left$"), timeout=60_000)
    expect(page.locator("#status")).to_have_text("Running…")
    page.click("#cancel")
    expect(page.locator("#status")).to_have_text("Canceled")
    expect(page.locator("#cancel")).to_be_hidden()
    # the progress came through the event stream, which carried the key (EventSource could
    # not): a stream without it would have answered 401
    assert [u for u in page.requests if u.endswith("/events")], page.requests
    assert page.evaluate("sessionStorage.getItem('pda.apiKey')") == API_KEY
    assert outside_requests(page.requests) == []


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_api_docs_render_their_routes_with_no_outside_request(server, page, path):
    from playwright.sync_api import expect

    page.goto(f"{server.url}{path}")
    expect(page.get_by_text("/v1/explanations/{job_id}/relevance").first).to_be_visible()
    page.wait_for_load_state("networkidle")
    assert any(u.endswith("/openapi.json") for u in page.requests)
    assert outside_requests(page.requests) == []
