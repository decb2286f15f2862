"""Live event streams (server-sent events), for any resource that has a version.

``GET /v1/explanations/{id}/events`` (and the batches' stream) answers
``text/event-stream``: one event each time the resource changes, ``id`` its version (a
per-subject counter raised by every write of its record, pda.jobs.store) and ``data`` the
resource exactly as its GET answers it (service/resources.py), at most one per
:data:`POLL_SECONDS`, with a keep-alive comment after :data:`KEEPALIVE_SECONDS` of quiet.
The stream ends after the final event (the job ended, or its record is gone). A client
that reconnects with ``Last-Event-ID: N`` gets only what is newer than version N; one
that already saw the final event gets ``204 No Content`` (which also stops a browser's
EventSource from reconnecting).

A stream costs no thread and no Redis connection of its own. Every stream of the process
waits on an ``asyncio.Event`` of its subject in one :class:`Hub`, whose single task
reads, every POLL_SECONDS, the versions of all followed subjects in one pipelined round
trip (in a thread: the Redis client is redis-py's synchronous one), and reads the
resource again only for the subjects whose version moved; many streams of one subject
share those reads. The task runs only while some stream is open.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import redis
from fastapi import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

log = logging.getLogger("pda.api")

#: how often the hub looks for changes: at most this many events a second, per stream
POLL_SECONDS = 0.25
#: a comment line after this long without an event keeps proxies from closing the stream
KEEPALIVE_SECONDS = 15.0
#: how long a browser's EventSource waits before it reconnects (the ``retry`` field)
RETRY_MS = 2000


@dataclass(frozen=True)
class Snapshot:
    """A subject's resource at one version; ``final`` when nothing will follow."""

    version: int
    data: dict[str, Any]
    final: bool

    @cached_property
    def event(self) -> bytes:
        """The event on the wire: ``id`` the version, ``data`` the resource as one line of
        JSON; encoded once, however many streams send it."""
        data = json.dumps(self.data, separators=(",", ":"))
        return f"id: {self.version}\ndata: {data}\n\n".encode()


@dataclass(frozen=True)
class Source:
    """What a stream follows: ``key`` names the subject (streams of one key share its
    reads); its version is the sum of the integer fields ``versions`` names, as
    (Redis hash, field) pairs (None while the first is missing: the subject is gone);
    ``read()`` (synchronous, run in a thread) is its snapshot now, None once it is gone."""

    key: str
    versions: tuple[tuple[str, str], ...]
    read: Callable[[], Snapshot | None]


@dataclass(eq=False)
class _Entry:
    source: Source
    latest: Snapshot | None
    watchers: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def version(self) -> int | None:
        return None if self.latest is None else self.latest.version

    def publish(self, snap: Snapshot | None) -> None:
        """Wake every stream of this subject (each waits on the event it last saw)."""
        self.latest = snap
        woken, self.changed = self.changed, asyncio.Event()
        woken.set()


class Hub:
    """The one poller of a process's event streams (see the module's docstring)."""

    def __init__(self, conn: redis.Redis, poll: float = POLL_SECONDS) -> None:
        self.conn, self.poll = conn, poll
        self.entries: dict[str, _Entry] = {}
        self._task: asyncio.Task | None = None

    @property
    def streams(self) -> int:
        return sum(e.watchers for e in self.entries.values())

    def join(self, source: Source, seed: Snapshot | None) -> _Entry:
        entry = self.entries.get(source.key)
        if entry is None:
            entry = self.entries[source.key] = _Entry(source, seed)
        entry.watchers += 1
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="pda-event-streams")
        return entry

    def leave(self, entry: _Entry) -> None:
        entry.watchers -= 1
        if entry.watchers <= 0 and self.entries.get(entry.source.key) is entry:
            del self.entries[entry.source.key]

    async def _run(self) -> None:
        while self.entries:
            await asyncio.sleep(self.poll)
            entries = list(self.entries.values())
            try:
                versions = await asyncio.to_thread(self._versions, entries)
                moved = [e for e, v in zip(entries, versions, strict=True) if v != e.version]
                if moved:
                    snaps = await asyncio.to_thread(_read_all, moved)
                    for entry, snap in zip(moved, snaps, strict=True):
                        entry.publish(snap)
            except redis.RedisError as exc:  # Redis away: streams stay open, keep-alives go on
                log.warning("event streams: %s", exc)
            except Exception:  # a bug must not stop every stream of the process for good
                log.exception("event streams: reading the followed resources failed")

    def _versions(self, entries: list[_Entry]) -> list[int | None]:
        pipe = self.conn.pipeline(transaction=False)
        for e in entries:
            for key, name in e.source.versions:
                pipe.hget(key, name)
        values = iter(pipe.execute())
        out: list[int | None] = []
        for e in entries:
            got = [next(values) for _ in e.source.versions]
            out.append(None if not got or got[0] is None
                       else sum(int(v) for v in got if v is not None))
        return out

    async def events(self, source: Source, seed: Snapshot, after: int | None
                     ) -> AsyncIterator[bytes]:
        """The stream's bytes: what is newer than version ``after`` (all when None), then
        every change, until the final snapshot."""
        entry = self.join(source, seed)
        try:
            yield f"retry: {RETRY_MS}\n\n".encode()
            sent = -1 if after is None else after
            while True:
                snap = entry.latest
                if snap is None:
                    return
                if snap.version > sent:
                    yield snap.event
                    sent = snap.version
                if snap.final:
                    return
                try:
                    await asyncio.wait_for(entry.changed.wait(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield b": keep-alive\n\n"
        finally:
            self.leave(entry)


def _read_all(entries: list[_Entry]) -> list[Snapshot | None]:
    return [e.source.read() for e in entries]


class EventStreamResponse(StreamingResponse):
    """A stream that ends as soon as its client goes away: Starlette notices a gone
    client only at its next write under ASGI 2.4, which for a quiet stream is the next
    keep-alive; this listens for the disconnect beside the stream instead."""

    media_type = "text/event-stream"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = asyncio.ensure_future(self.stream_response(send))
        gone = asyncio.ensure_future(self.listen_for_disconnect(receive))
        try:
            await asyncio.wait({stream, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stream, gone):
                task.cancel()
            await asyncio.gather(stream, gone, return_exceptions=True)
        failed = None if stream.cancelled() else stream.exception()
        if failed is not None and not isinstance(failed, OSError):  # OSError: client gone
            raise failed


def last_event_id(value: str | None) -> int | None:
    """The version a reconnecting client saw last (``Last-Event-ID``); None if absent or
    not one of ours (the stream then starts from the current state)."""
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


def respond(request: Request, source: Source, seed: Snapshot, after: int | None) -> Response:
    """The stream of ``source`` from ``seed`` (its snapshot now, read by the route, which
    checked it exists and is the caller's), or 204 when the caller already saw its final
    event."""
    if seed.final and after is not None and seed.version <= after:
        return Response(status_code=204)
    hub: Hub = request.app.state.event_hub
    return EventStreamResponse(hub.events(source, seed, after), headers={
        "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
