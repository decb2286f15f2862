"""The batch page, ``/ui/batches/{id}`` (issue 32): its items with thumbnails, each opening
the viewer's single-job view.

The page is served by the real app; in the browser test the batch API's answers
(``GET /v1/batches/{id}``, its event stream and the items' overlays) are stubbed at the
HTTP level with Playwright's routing, in the batch resource's contract shape (issue 32),
so the page is tested against the contract whether or not this build has the batch
routes."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pda.settings import Settings
from tests.support.ui import outside_requests

OVERLAY = (Path(__file__).parents[1] / "pda" / "data" / "batch-overlay.png").read_bytes()


def _item(index: int, filename: str, status: str, **extra) -> dict:
    job = f"job-{index}"
    links = {"self": f"/v1/explanations/{job}"}
    if status == "finished":
        links.update({"relevance": f"/v1/explanations/{job}/relevance",
                      "overlays": {"281": f"/v1/explanations/{job}/overlays/281",
                                   "285": f"/v1/explanations/{job}/overlays/285"}})
    return {"index": index, "filename": filename, "id": job, "status": status,
            "links": links, "error": None, **extra}


RUNNING = {
    "id": "b-1", "status": "running",
    "counts": {"queued": 1, "running": 1, "finished": 1, "failed": 0, "canceled": 0},
    "progress": {"done": 50, "total": 150, "fraction": 1 / 3}, "eta_seconds": 40,
    "items": [_item(0, "cat.jpg", "finished"), _item(1, "broken.jpg", "running"),
              _item(2, "dog.png", "queued")],
    "links": {"self": "/v1/batches/b-1", "results": "/v1/batches/b-1/results.zip",
              "events": "/v1/batches/b-1/events"},
}
FINISHED = copy.deepcopy(RUNNING)
FINISHED.update({"status": "finished", "eta_seconds": 0,
                 "counts": {"queued": 0, "running": 0, "finished": 2, "failed": 1,
                            "canceled": 0},
                 "progress": {"done": 100, "total": 100, "fraction": 1.0}})
FINISHED["items"][1] = _item(1, "broken.jpg", "failed", error={
    "type": "/problems/unsupported-image", "title": "Not a supported image", "status": 415,
    "detail": "not a recognised image file"})
FINISHED["items"][2] = _item(2, "dog.png", "finished")


@pytest.fixture
def client() -> Iterator[TestClient]:
    from service.main import create_app

    app = create_app(Settings(redis_url=None), start_worker=False)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_the_batch_page_is_served_with_the_viewers_policy_and_its_own_assets(client):
    r = client.get("/ui/batches/b-1")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["cache-control"] == "no-cache"
    assert '<base href="../../">' in r.text  # relative links resolve from the viewer's root
    urls = re.findall(r'(?:src|href)="([^"]*)"', r.text)
    assets = [u for u in urls if u.endswith((".js", ".css", ".svg"))]
    assert {"static/batch.js", "static/batch.css", "static/viewer.css"} <= set(assets)
    for u in assets:
        assert client.get(f"/{u}").status_code == 200, u
    assert not [u for u in urls if re.match(r"(https?:)?//", u)]


@pytest.mark.slow
def test_the_batch_page_lists_the_items_follows_the_stream_and_opens_a_job(server, page):
    from playwright.sync_api import expect

    overlays: list[str] = []

    def batch(route):
        route.fulfill(status=200, content_type="application/json", body=json.dumps(RUNNING))

    def events(route):  # the stream: one event, the batch as it ends
        body = f"id: 7\ndata: {json.dumps(FINISHED)}\n\n"
        route.fulfill(status=200, content_type="text/event-stream", body=body)

    def overlay(route):
        overlays.append(route.request.url)
        route.fulfill(status=200, content_type="image/png", body=OVERLAY)

    page.route(re.compile(r".*/v1/batches/b-1$"), batch)
    page.route(re.compile(r".*/v1/batches/b-1/events$"), events)
    page.route(re.compile(r".*/v1/explanations/job-\d+/overlays/\d+\?.*"), overlay)
    page.goto(f"{server.url}/ui/batches/b-1")

    expect(page.locator("#batch-id")).to_have_text("b-1")
    expect(page.locator("#status")).to_have_text("Finished")
    expect(page.locator("#progress-text")).to_have_text("100 / 100 forward passes")
    expect(page.locator("#counts")).to_have_text("(2 finished, 1 failed)")
    items = page.locator("#items > li")
    expect(items).to_have_count(3)
    expect(items.nth(0).locator(".name")).to_have_text("cat.jpg")
    expect(items.nth(1)).to_have_class(re.compile(r"\bfailed\b"))
    expect(items.nth(1).locator(".state")).to_have_text("failed: Not a supported image")
    expect(items.nth(2).locator(".state")).to_have_text("finished")
    # a thumbnail per finished item: its first overlay, asked for at 160 px
    for k in (0, 2):
        img = items.nth(k).locator(".thumb img")
        expect(img).to_have_count(1)
        page.wait_for_function("(img) => img.complete && img.naturalWidth > 0",
                               arg=img.element_handle())
    expect(items.nth(1).locator(".thumb img")).to_have_count(0)
    assert sorted(overlays) == [f"{server.url}/v1/explanations/job-{k}/overlays/281?size=160"
                                for k in (0, 2)]
    expect(page.locator("#cancel")).to_be_hidden()
    expect(page.locator("#results")).to_have_attribute("href", "/v1/batches/b-1/results.zip")
    # each item opens the viewer's single-job view
    link = items.nth(2).locator("a")
    assert link.evaluate("(a) => a.href") == f"{server.url}/#job=job-2"
    link.click()
    page.wait_for_url(f"{server.url}/#job=job-2")
    expect(page.locator("#job-id")).to_have_text("job-2")
    assert outside_requests(page.requests) == []
