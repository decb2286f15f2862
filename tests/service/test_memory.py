"""Bounded API memory: a burst of uploads declaring 6300 x 6300 pixels (a 120 kB PNG,
under the pixel cap) may not take the API anywhere near its pod limit, and the memory
goes back to the system afterwards (a real ``pda serve`` process, RSS from /proc)."""

from __future__ import annotations

import pytest

from tests.support.figures import record
from tests.support.memory_probe import Sampler, big_png, burst, steady_rss
from tests.support.service import make_settings
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow


def test_a_burst_of_huge_uploads_is_bounded_and_released(clean_redis, start_server):
    server = start_server(make_settings(), PDA_MAX_QUEUED_PER_KEY="1000")
    pid = server.proc.pid
    data = big_png()
    burst(server.url, data, 1, 0)  # warm up: the first request imports and caches
    idle = wait_until("the API's memory to settle after the warm-up",
                      lambda: steady_rss(pid), timeout=30, every=0)
    sampler = Sampler(pid)
    sampler.start()
    codes = burst(server.url, data, 8, 100)
    # every upload was answered; the sampler keeps sampling until the memory settles
    settled = wait_until("the API's memory to settle after the burst",
                         lambda: steady_rss(pid), timeout=30, every=0)
    sampler.running = False
    sampler.join()
    assert set(codes) == {202}
    # each decode holds ~120 MB of pixels: two at a time (PDA_MAX_CONCURRENT_DECODES),
    # where unbounded it was ~340 MB per concurrent request, kept after the burst
    assert sampler.peak - idle < 500, (idle, sampler.peak)
    assert settled - idle < 100, (idle, settled)
    record("api_memory_8_large_uploads", idle_mb=idle, peak_mb=sampler.peak,
           settled_mb=settled)
