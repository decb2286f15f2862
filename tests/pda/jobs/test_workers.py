"""The workers' own heartbeat on a real Redis: who counts as alive (a beat within the
freshness window), what each said about itself, and a clean exit."""

from __future__ import annotations

import json
import time

from pda import keys
from pda.jobs.workers import FORGET_SECONDS, WorkerRegistry

T = 1_000_000.0  # a fixed clock: every call below passes ``now``


def test_a_worker_counts_while_its_last_beat_is_fresh(conn):
    reg = WorkerRegistry(conn, fresh_seconds=30)
    reg.beat("w1", {"state": "idle"}, now=T)
    assert reg.alive_count(now=T + 29) == 1
    assert reg.alive_count(now=T + 31) == 0
    assert reg.alive(now=T + 31) == []


def test_alive_lists_what_each_worker_said_freshest_first(conn):
    reg = WorkerRegistry(conn, fresh_seconds=30)
    reg.beat("old", {"state": "busy", "job": "j1"}, now=T)
    reg.beat("new", {"state": "idle"}, now=T + 10)
    assert reg.alive(now=T + 12) == [
        {"state": "idle", "name": "new", "beat_at": T + 10},
        {"state": "busy", "job": "j1", "name": "old", "beat_at": T}]
    # its info expires a few freshness windows after the beat (3 x 30 s)
    assert 88 <= conn.ttl(keys.worker("old")) <= 90
    assert json.loads(conn.get(keys.worker("new")))["beat_at"] == T + 10


def test_a_worker_whose_info_expired_is_listed_by_name(conn):
    reg = WorkerRegistry(conn, fresh_seconds=30)
    reg.beat("w", {"state": "idle"}, now=T)
    conn.delete(keys.worker("w"))
    assert reg.alive(now=T) == [{"name": "w"}]


def test_summary_counts_live_workers_by_state(conn):
    reg = WorkerRegistry(conn, fresh_seconds=3600)  # every beat below is fresh
    now = time.time()
    for name, state in [("a", "busy"), ("b", "idle"), ("c", "idle"), ("d", "loading")]:
        reg.beat(name, {"state": state}, now=now)
    assert reg.summary() == {"alive": 4, "busy": 1, "idle": 2, "loading": 1,
                             "fresh_seconds": 3600}


def test_leave_stops_counting_at_once_and_old_beats_are_forgotten(conn):
    reg = WorkerRegistry(conn, fresh_seconds=30)
    reg.beat("a", {}, now=T)
    reg.beat("b", {}, now=T)
    reg.leave("a")
    assert reg.alive_count(now=T) == 1 and not conn.exists(keys.worker("a"))
    reg.beat("c", {}, now=T + FORGET_SECONDS + 1)  # a beat drops entries an hour old
    assert [m.decode() for m in conn.zrange(keys.WORKERS, 0, -1)] == ["c"]


def test_a_window_under_a_second_still_keeps_the_info_a_second(conn):
    reg = WorkerRegistry(conn, fresh_seconds=0.2)
    reg.beat("w", {}, now=T)
    assert conn.ttl(keys.worker("w")) == 1
