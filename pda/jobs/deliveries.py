"""Signed callbacks, delivered at least once: the outbox of events and their deliveries.

When a job (or a batch) that has callback URLs ends, the transaction that ends it also
writes, for each URL, one delivery (:func:`queue_event`): the event's type and time, the
subject as it ended, the URL, an entry in the due index, and the RQ message "deliver D"
on the queue ``PDA_QUEUE_NAME-callbacks``. So an event exists exactly when its job ended,
and nothing between the two can be lost by a crash of the API or a worker.

A worker's delivery thread takes the message (``worker.deliveries.deliver``): it claims
the delivery (:meth:`Deliveries.claim`, a lease), renders the body on the first attempt,
POSTs it signed (:mod:`pda.webhooks`) and records the answer (:meth:`Deliveries.record`):
a 2xx ends it (``delivered``, never sent again); a non-2xx, a timeout, a refused
connection or a refused address schedules the next attempt after :func:`backoff`, until
:data:`MAX_ATTEMPTS` (``failed``). Each outcome is mirrored into the subject's record
(its ``callbacks`` entry), which is what the job resource shows.

RQ's scheduler does not run: the due index is the schedule. Each worker's maintenance
pass (:meth:`Deliveries.enqueue_due`) enqueues the deliveries that are due: retries whose
time has come, a message Redis lost (it restarted from an append-only file that missed
it), and an attempt whose worker died mid-request (its lease ran out). Duplicated
messages are harmless: only the holder of a delivery's lease sends it.

Keys (:mod:`pda.keys`): ``delivery:{id}`` (hash, JSON values; ``id`` is the
``webhook-id``), ``deliveries:due`` (zset: id -> when the next attempt is due).
"""

from __future__ import annotations

import json
import random
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis
from rq import Queue

from .. import keys
from ..errors import CallbackNotAllowedError, CallbacksOffError
from ..settings import Settings
from .queue import TASKS
from .record import encode

#: attempts of one delivery in all (the first and 9 retries)
MAX_ATTEMPTS = 10
#: each wait is this many times the one before ...
GROWTH = 4
#: ... and at most this many times the base (4 h at the default 10 s)
CAP = 1440
#: states of a delivery; ``waiting`` is a callback entry whose subject has not ended yet
WAITING, PENDING, DELIVERED, FAILED = "waiting", "pending", "delivered", "failed"
#: an enqueued message is given this long to be taken before the repair enqueues it again
ENQUEUE_GRACE = 60.0
#: a delivery's hash outlives its last scheduled attempt by this long
KEEP_SECONDS = 24 * 3600
#: distinct callback URLs one subject may have (identical requests add theirs)
MAX_CALLBACKS = 10


def check_url(settings: Settings, url: Any) -> str | None:
    """A request's ``callback_url``, checked at submit (None when it names none): refused
    (422) while callbacks are off (no PDA_WEBHOOK_SECRET to sign with, or no
    PDA_CALLBACK_ALLOWED_HOSTS), or when its host is not allowed (pda.webhooks)."""
    if url is None or url == "":
        return None
    if not isinstance(url, str):
        raise CallbackNotAllowedError("callback_url must be a URL (a string)")
    if settings.webhook_secret is None:
        raise CallbacksOffError(
            "callbacks are off on this server: PDA_WEBHOOK_SECRET is not set, so there is "
            "nothing to sign them with; leave out callback_url (follow the job's /events "
            "stream instead), or ask the operator to set it")
    allow = settings.callback_allowlist
    if allow.empty:
        raise CallbacksOffError(
            "callbacks are off on this server: PDA_CALLBACK_ALLOWED_HOSTS names no host they "
            "may go to; leave out callback_url (follow the job's /events stream instead)")
    return allow.check_url(url)


def queue_name(settings: Settings) -> str:
    """The RQ queue of delivery messages."""
    return f"{settings.queue_name}-callbacks"


def backoff(failed: int, base: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds before the attempt after ``failed`` failed ones: base x 4^(failed-1), at most
    base x 1440, with +-25 % jitter (receivers that failed together are not hit together
    again). At the default base of 10 s: 10 s, 40 s, 2.7 min, 11 min, 43 min, 2.8 h, then
    4 h three times: the last of the 10 attempts about 16 h after the first."""
    delay = min(base * GROWTH ** (failed - 1), base * CAP)
    return delay * (0.75 + 0.5 * rand())


def schedule(base: float) -> list[float]:
    """The waits between the attempts, without jitter."""
    return [min(base * GROWTH ** (n - 1), base * CAP) for n in range(1, MAX_ATTEMPTS)]


def lease_seconds(settings: Settings) -> float:
    """How long one attempt may hold its delivery: the whole exchange is cut at twice the
    timeout (pda.webhooks.post), plus as much again for resolving and recording."""
    return 3 * settings.callback_timeout_seconds


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def waiting(url: str) -> dict[str, Any]:
    """A callback entry of a subject that has not ended yet."""
    return {"url": url, "status": WAITING}


def new_event(entry: dict[str, Any], event_type: str, now: float) -> dict[str, Any]:
    """A waiting entry turned into its event's pending delivery (a new ``webhook-id``)."""
    return {"url": entry["url"], "event_id": "msg_" + secrets.token_urlsafe(16),
            "type": event_type, "status": PENDING, "attempts": 0, "last_status": None,
            "last_error": None, "last_attempt_at": None, "next_attempt_at": iso(now),
            "delivered_at": None}


def new_events(entries: list[dict[str, Any]], event_type: str, now: float
               ) -> list[dict[str, Any]]:
    """A subject's callback entries as they are once it ended: each waiting one becomes
    its event's pending delivery (:func:`new_event`), the others stay as they are."""
    return [new_event(e, event_type, now) if e.get("status") == WAITING else e
            for e in entries]


def queue_events(pipe: redis.client.Pipeline, conn: redis.Redis, queue: str,
                 before: list[dict[str, Any]], after: list[dict[str, Any]], *, subject: str,
                 subject_id: str, data: dict[str, Any], mirror: str | None,
                 now: float) -> None:
    """Queue (inside the MULTI that ends the subject) the event of every entry that
    :func:`new_events` turned from ``before`` into ``after``."""
    for old, entry in zip(before, after, strict=True):
        if old.get("status") == WAITING:
            queue_event(pipe, conn, queue, entry, subject=subject, subject_id=subject_id,
                        data=data, mirror=mirror, now=now)


def queue_event(pipe: redis.client.Pipeline, conn: redis.Redis, queue: str,
                entry: dict[str, Any], *, subject: str, subject_id: str,
                data: dict[str, Any], mirror: str | None, now: float) -> None:
    """Queue, inside the MULTI of ``pipe`` (the transaction that ends the subject), the
    writes of the event ``entry`` (:func:`new_event`): its delivery, its due entry and its
    RQ message on the queue named ``queue`` (:func:`queue_name`).

    ``data`` is what the event's ``data`` is rendered from at delivery: for an
    ``explanation`` the job's record as it ended (rendered as GET returns it), for other
    subjects the resource itself. ``mirror`` is the key of the subject's record (a hash
    whose ``callbacks`` field holds ``entry``), where each outcome is copied."""
    did = entry["event_id"]
    fields = {"id": did, "type": entry["type"], "url": entry["url"], "subject": subject,
              "subject_id": subject_id, "mirror": mirror, "timestamp": iso(now),
              "data": data, "state": PENDING, "attempts": 0, "next_at": now}
    pipe.hset(keys.delivery(did), mapping=encode(fields))
    pipe.expire(keys.delivery(did), KEEP_SECONDS)
    # the message below is the first attempt; the due entry repairs its loss
    pipe.zadd(keys.DELIVERIES_DUE, {did: now + ENQUEUE_GRACE})
    enqueue(Queue(queue, connection=conn), did, pipeline=pipe)


def enqueue(queue: Queue, delivery_id: str, pipeline: redis.client.Pipeline | None = None
            ) -> None:
    """Put "deliver ``delivery_id``" on the callbacks queue (in ``pipeline`` when given)."""
    queue.enqueue(TASKS["delivery"], delivery_id, job_timeout=600, result_ttl=0,
                  failure_ttl=3600, description=f"callback {delivery_id}",
                  pipeline=pipeline)


def decode(raw: dict[bytes, bytes]) -> dict[str, Any]:
    return {k.decode(): json.loads(v) for k, v in raw.items()}


def public(fields: dict[str, Any]) -> dict[str, Any]:
    """A delivery as its subject's ``callbacks`` entry shows it."""
    pending = fields["state"] == PENDING
    return {"url": fields["url"], "event_id": fields["id"], "type": fields["type"],
            "status": fields["state"], "attempts": fields.get("attempts", 0),
            "last_status": fields.get("last_status"), "last_error": fields.get("last_error"),
            "last_attempt_at": fields.get("last_attempt_at"),
            "next_attempt_at": iso(fields["next_at"]) if pending else None,
            "delivered_at": fields.get("delivered_at")}


class Deliveries:
    """The delivery side of the outbox: claim, record, and enqueue what is due."""

    def __init__(self, conn: redis.Redis, settings: Settings) -> None:
        self.r, self.settings = conn, settings

    def get(self, delivery_id: str) -> dict[str, Any] | None:
        raw = self.r.hgetall(keys.delivery(delivery_id))
        return decode(raw) if raw else None

    def claim(self, delivery_id: str) -> dict[str, Any] | None:
        """Hold a pending, due delivery for one attempt (a lease of :func:`lease_seconds`);
        its fields with ``holder``, or None: delivered, given up, not due yet, held by an
        attempt in flight, or gone (then dropped from the due index)."""
        key = keys.delivery(delivery_id)
        holder = secrets.token_hex(8)

        def write(pipe: redis.client.Pipeline) -> dict[str, Any] | None:
            raw = pipe.hgetall(key)
            if not raw:
                pipe.multi()
                pipe.zrem(keys.DELIVERIES_DUE, delivery_id)
                return None
            fields, now = decode(raw), time.time()
            if fields["state"] != PENDING or fields["next_at"] > now + 1.0 or \
                    (fields.get("lease_until") or 0) > now:
                return None
            until = now + lease_seconds(self.settings)
            pipe.multi()
            pipe.hset(key, mapping=encode({"holder": holder, "lease_until": until}))
            pipe.zadd(keys.DELIVERIES_DUE, {delivery_id: until})
            return {**fields, "holder": holder}

        return self.r.transaction(write, key, value_from_callable=True)

    def record(self, claimed: dict[str, Any], *, status: int | None = None,
               error: str | None = None, body: str | None = None) -> str:
        """The outcome of the attempt ``claimed`` holds: ``status`` (the HTTP answer) or
        ``error`` (no answer). Returns ``delivered``, ``retry``, ``failed``, or ``lost``
        (the lease ran out and another attempt holds it now: nothing is written).
        ``body`` freezes the rendered body, so every retry sends the same bytes."""
        did = claimed["id"]
        key = keys.delivery(did)
        mirror = claimed.get("mirror")
        outcome: dict[str, Any] = {}

        def write(pipe: redis.client.Pipeline) -> str:
            raw = pipe.hgetall(key)
            if not raw or decode(raw).get("holder") != claimed["holder"]:
                return "lost"
            fields = decode(raw)
            now = time.time()
            attempts = int(fields.get("attempts", 0)) + 1
            update: dict[str, Any] = {"attempts": attempts, "last_status": status,
                                      "last_error": error, "last_attempt_at": iso(now),
                                      "holder": None, "lease_until": None}
            if body is not None:
                update["body"] = body
            if status is not None and 200 <= status < 300:
                update.update(state=DELIVERED, delivered_at=iso(now))
            elif attempts >= MAX_ATTEMPTS:
                update["state"] = FAILED
            else:
                update["next_at"] = now + backoff(attempts,
                                                  self.settings.callback_retry_base_seconds)
            fields.update(update)
            entries = pipe.hget(mirror, "callbacks") if mirror else None
            pipe.multi()
            pipe.hset(key, mapping=encode(update))
            if fields["state"] == PENDING:
                pipe.zadd(keys.DELIVERIES_DUE, {did: fields["next_at"]})
                pipe.expire(key, int(fields["next_at"] - now + KEEP_SECONDS))
            else:
                pipe.zrem(keys.DELIVERIES_DUE, did)
                pipe.expire(key, KEEP_SECONDS)
            if entries is not None:  # the subject's record still exists: show the outcome
                shown = [public(fields) if e.get("event_id") == did else e
                         for e in json.loads(entries)]
                pipe.hset(mirror, "callbacks", json.dumps(shown))
                pipe.hincrby(mirror, "version", 1)
            outcome["state"] = fields["state"]
            return "retry" if fields["state"] == PENDING else fields["state"]

        watched = (key, mirror) if mirror else (key,)
        return self.r.transaction(write, *watched, value_from_callable=True)

    def enqueue_due(self, now: float | None = None, limit: int = 200) -> list[str]:
        """Enqueue the deliveries whose next attempt is due (the repair loop: retries, lost
        messages, attempts whose worker died). Each due entry is enqueued by one caller
        (a claim key per entry and due time); it moves ENQUEUE_GRACE ahead meanwhile."""
        now = time.time() if now is None else now
        due = self.r.zrangebyscore(keys.DELIVERIES_DUE, "-inf", now, start=0, num=limit,
                                   withscores=True)
        queue = Queue(queue_name(self.settings), connection=self.r)
        out = []
        for member, score in due:
            did = member.decode()
            if not self.r.set(keys.repair(f"delivery:{did}", int(score * 1000)), 1,
                              ex=int(ENQUEUE_GRACE * 5), nx=True):
                continue
            self.r.zadd(keys.DELIVERIES_DUE, {did: now + ENQUEUE_GRACE}, xx=True)
            enqueue(queue, did)
            out.append(did)
        return out
