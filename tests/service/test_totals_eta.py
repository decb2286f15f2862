"""Honest progress with a real Redis and real ``pda worker`` processes: the total a job
shows at submit is its final one (sweep, the image's pass and the faithfulness scores)
for every layer, target and split, it never changes while the job runs, and the ETA
tracks the time the job really has left."""

from __future__ import annotations

import time

import pytest

from tests.support.paths import CAT
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow
PNG = CAT.read_bytes()


def post(server, data):
    r = server.http.post("/v1/explanations", files={"image": ("cat.png", PNG, "image/png")},
                         data=data)
    assert r.status_code == 202, r.text
    return r.json()


def follow(server, job: dict, timeout: float = 600) -> list[tuple[float, dict]]:
    """Every state of the job, polled every 0.2 s until it ends: (time, resource)."""
    seen = [(time.time(), job)]

    def ended() -> bool:
        cur = server.http.get(f"/v1/explanations/{job['id']}").json()
        seen.append((time.time(), cur))
        return cur["status"] in ("finished", "failed", "canceled")

    wait_until("the job to end", ended, timeout=timeout, every=0.2,
               detail=lambda: seen[-1][1])
    return seen


# 7 x 7 windows of 32 px, 2 samples: 99 sweep passes; the scores on 224 x 224 have 24
# interior points (4 % steps): 2 + 2 x 24 x (targets + 3 random orders)
CASES = [
    ({"target": "top2"}, 99 + 2 + 48 * 5),
    ({"target": "285,281,282"}, 99 + 2 + 48 * 6),
    ({"layer": "logits", "target": "top1"}, 99 + 2 + 48 * 4),
    ({"layer": "_blocks.3", "target": "top2"}, 99),  # a hidden layer has no scores
    # 13 x 13 windows x 2 samples + 1: over PDA_CHUNK_PASSES, split into chunks, merged
    ({"target": "top1", "stride": "16", "chunk": True}, 339 + 2 + 48 * 4),
]


def test_the_total_at_submit_is_the_final_total_and_never_changes(settings, start_server,
                                                                  start_worker):
    server = start_server(settings)
    # PDA_CHUNK_PASSES 200: the 98 sweep passes run whole, the 338 of stride 16 split
    start_worker(settings, PDA_CHUNK_PASSES="200")
    start_worker(settings, PDA_CHUNK_PASSES="200")
    for extra, expected in CASES:
        data = {"window": "32", "stride": "32", "samples": "2", "faithfulness": "true",
                **{k: v for k, v in extra.items() if k != "chunk"}}
        job = post(server, data)
        assert job["progress"]["total"] == expected, (extra, job["progress"])
        seen = follow(server, job)
        final = seen[-1][1]
        assert final["status"] == "finished", final
        assert {cur["progress"]["total"] for _, cur in seen} == {expected}, extra
        assert final["progress"]["done"] == expected
        assert bool(final["chunks"]) == bool(extra.get("chunk")), final["chunks"]
        doc = server.http.get(final["links"]["relevance"]).json()
        assert doc["stats"]["forward_passes"] == expected


def test_the_eta_tracks_the_time_left_at_30_50_and_70_percent(settings, start_server,
                                                              start_worker):
    server = start_server(settings)
    start_worker(settings)
    # 13 x 13 windows x 4 samples + 1 = 677 sweep passes, then 194 for the scores: the ETA
    # must cover both phases from the start
    job = post(server, {"window": "32", "stride": "16", "samples": "4", "target": "top1",
                        "faithfulness": "true", "seed": "3"})
    assert job["progress"]["total"] == 677 + 194
    seen = follow(server, job)
    end = seen[-1][0]
    assert seen[-1][1]["status"] == "finished", seen[-1][1]
    running = [(t, c) for t, c in seen if c["status"] == "running"]
    errors = {}
    for mark in (0.3, 0.5, 0.7):
        t, cur = next((t, c) for t, c in running if c["progress"]["fraction"] >= mark)
        assert cur["eta_seconds"] is not None, cur
        left = end - t
        errors[mark] = cur["eta_seconds"] / left
        print(f"ETA at {cur['progress']['fraction']:.0%}: {cur['eta_seconds']:.1f} s, "
              f"really {left:.1f} s left (x{errors[mark]:.2f})")
    assert all(0.5 <= e <= 2.0 for e in errors.values()), errors
    # a job that waits is estimated from the rate the workers measured for a whole job
    first = post(server, {"window": "32", "stride": "32", "samples": "2", "seed": "4",
                          "faithfulness": "false"})
    queued = post(server, {"window": "32", "stride": "32", "samples": "2", "seed": "5",
                           "faithfulness": "false"})
    cur = server.http.get(f"/v1/explanations/{queued['id']}").json()
    if cur["status"] == "queued":
        assert cur["eta_seconds"] is not None and cur["eta_seconds"] > 0, cur
    follow(server, first)


def test_the_phase_and_the_eta_are_there_from_the_first_poll(settings, start_server,
                                                              start_worker):
    """A fresh deployment: the worker measured the model's rate as it loaded it, so the
    very first job has an ETA before it has measured its own, whatever its phase; a job
    queued behind it counts the work ahead of it, and every poll names the phase."""
    from tests.support.servers import worker_loaded

    server = start_server(settings)
    start_worker(settings)
    wait_until("a loaded worker", lambda: worker_loaded(server.http), timeout=180)
    fields = {"window": "16", "stride": "16", "sampler": "constant", "faithfulness": "false"}
    first = post(server, {**fields, "seed": "1"})
    second = post(server, {**fields, "seed": "2", "target": "top1"})
    a = server.http.get(f"/v1/explanations/{first['id']}").json()
    b = server.http.get(f"/v1/explanations/{second['id']}").json()
    for job in (first, second, a, b):
        assert job["phase"] in ("queued", "preparing", "sweeping", "scoring", "writing"), job
    assert a["eta_seconds"] is not None and a["eta_seconds"] > 0, a
    assert b["status"] == "queued" and b["phase"] == "queued", b
    assert b["eta_seconds"] is not None and b["eta_seconds"] > a["eta_seconds"], (a, b)
    seen = follow(server, second)
    assert all(c["phase"] is not None for _, c in seen if c["status"] in ("queued", "running"))
    assert all(c["eta_seconds"] is not None for _, c in seen
               if c["status"] in ("queued", "running")), [c["eta_seconds"] for _, c in seen]
    assert seen[-1][1]["status"] == "finished" and seen[-1][1]["phase"] is None
