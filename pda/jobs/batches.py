"""Batches: many images in one request, each an ordinary explanation job, fed fairly.

A batch (``POST /v1/batches``) is a record beside its items' jobs. Each valid image becomes
an explanation job through :func:`pda.jobs.lifecycle.submit` like a single request's (so
``/v1/explanations/{id}`` works for it, a large one still splits into chunks, and an image
identical to an existing job of the same owner is that job), except that it is stored
without being enqueued: the **feeder** (:meth:`Batches.feed`) enqueues batch items on the
batch queue (``PDA_QUEUE_NAME-batch``, which workers take after predictions, explanations
and chunks), keeping at most ``PDA_BATCH_IN_FLIGHT`` messages on it, and fills it round
robin across API keys (the key fed longest ago first; a key's batches oldest first). So
an interactive job waits behind at most the job in progress and those few messages, and
two keys' batches take turns whatever their sizes. The feeder runs when a batch is
submitted, when a worker takes or ends a job, and in every worker's maintenance pass (so a
dead worker loses nothing); one feeder at a time holds a Redis lock, and a batch's
``fed`` position moves past an item only after its message is enqueued (a crash between
the two enqueues it again; the job's compare-and-set start runs it once).

An image the API refuses (corrupt, empty, too small) is an item without a job whose
``error`` is its problem document; the other items run. The batch ends once: when every
item has ended, :meth:`Batches.finalize` turns it ``finished`` and writes its
``batch.finished`` callbacks in the same transaction (:mod:`.deliveries`, the outbox);
``DELETE`` cancels its items not yet ended and turns it ``canceled`` (``batch.canceled``).

Keys (:mod:`pda.keys`): ``batch:{id}`` (hash, JSON values), ``batch:{id}:items`` (list, in
upload order), ``batches:active`` (zset of open batches), ``batches:turns`` (owner -> the
feeder turn it was last fed at), ``batches:feeding`` (the feeder's lock).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from contextlib import suppress
from typing import Any

import redis

from .. import keys
from ..settings import Settings
from . import deliveries
from .queue import batch_queue, enqueue_attempt, message_pending, rq_job_id
from .record import TERMINAL, JobStatus, encode
from .store import TOMBSTONE_SECONDS, JobStore, now_iso

log = logging.getLogger("pda.jobs")

#: the batch resource's statuses; the record stores ``open`` until the batch ends
QUEUED, RUNNING, FINISHED, CANCELED = "queued", "running", "finished", "canceled"
OPEN = "open"
STATUSES = (QUEUED, RUNNING, FINISHED, CANCELED)
#: an item's statuses: its job's, or ``failed`` for an image refused at submit
ITEM_STATUSES = tuple(s.value for s in JobStatus)
#: what the batch's callbacks are sent when it ends
EVENTS = {FINISHED: "batch.finished", CANCELED: "batch.canceled"}
#: the longest the backlog gauge's list gets (KEDA scales on it: any more is as many)
BACKLOG_CAP = 10_000
#: the job fields a batch resource reads of each item
JOB_FIELDS = ("status", "progress_done", "progress_total", "planned_passes",
              "forward_passes", "targets", "started_at", "finished_at", "error",
              "progress_rate", "heartbeat_at", "phase", "version")


def new_batch_id() -> str:
    """128 random bits, URL-safe, like job ids."""
    return "b_" + secrets.token_urlsafe(16)


def item_entry(index: int, filename: str, *, job: str | None = None, own: bool = False,
               error: dict[str, Any] | None = None) -> dict[str, Any]:
    """An item as the batch stores it: its job (``own``: created for this batch, not an
    existing job it repeats), or the problem document of its refused image."""
    return {"index": index, "filename": filename, "job": job, "own": own, "error": error}


def job_links(job_id: str, targets: list[dict[str, Any]] | None) -> dict[str, Any]:
    """A finished job's links, as ``GET /v1/explanations/{id}`` shows them."""
    base = f"/v1/explanations/{job_id}"
    return {"self": base, "relevance": f"{base}/relevance",
            "relevance_npy": f"{base}/relevance.npy", "input": f"{base}/input.png",
            "overlays": {str(t["target"]): f"{base}/overlay.png?target={t['target']}"
                         for t in targets or []}}


def _total(job: dict[str, Any]) -> int:
    return int(job.get("progress_total") or job.get("planned_passes")
               or job.get("forward_passes") or 0)


def item_public(item: dict[str, Any], job: dict[str, Any] | None) -> dict[str, Any]:
    """One item of the batch resource: index, filename, its job's id and status, the job's
    links once finished, the problem document once failed."""
    if item.get("job") is None:
        status, error, links = JobStatus.FAILED.value, item.get("error"), None
    elif job is None:  # the job's record expired (long after the batch ended)
        status, error, links = JobStatus.CANCELED.value, None, None
    else:
        status = job["status"]
        error = job.get("error") if status == JobStatus.FAILED else None
        links = job_links(item["job"], job.get("targets")) if status == JobStatus.FINISHED \
            else None
    return {"index": item["index"], "filename": item["filename"], "id": item.get("job"),
            "status": status, "links": links, "error": error}


def progress(items: list[dict[str, Any]], jobs: list[dict[str, Any] | None],
             total: int) -> dict[str, Any]:
    """Forward passes done over all items, of ``total`` (fixed at submit)."""
    done = 0
    for item, job in zip(items, jobs, strict=True):
        if item.get("job") is None or job is None:
            continue
        done += _total(job) if job["status"] == JobStatus.FINISHED else \
            int(job.get("progress_done") or 0)
    done = min(done, total) if total else done
    return {"done": done, "total": total,
            "fraction": round(done / total, 4) if total else (1.0 if total == 0 else 0.0)}


def status_of(rec: dict[str, Any], shown: list[dict[str, Any]]) -> str:
    """The batch's status from its record and its items as shown."""
    if rec.get("status") in (FINISHED, CANCELED):
        return rec["status"]
    if rec.get("complete") and all(i["status"] in TERMINAL for i in shown):
        return FINISHED
    if any(i["status"] != JobStatus.QUEUED for i in shown if i["id"] is not None):
        return RUNNING
    return QUEUED


def remaining_seconds(job: dict[str, Any], rates: dict[str, float]) -> float | None:
    """Seconds an item's job still needs on one worker (None: no rate measured yet)."""
    if job is None or job["status"] in TERMINAL:
        return 0.0
    rate = job.get("progress_rate") or rates.get("rate")
    if not rate:
        return None
    left = max(0, _total(job) - int(job.get("progress_done") or 0)) / rate
    if job["status"] == JobStatus.QUEUED or job.get("phase") in ("preparing", "queued"):
        left += rates.get("prep", 0.0)
    return left


def fair_eta(mine: float, others: list[float], interactive: float, workers: int,
             longest: float) -> float:
    """Seconds until a batch with ``mine`` seconds of work left is done, when the workers
    (``workers`` of them) serve the interactive work (``interactive`` seconds) first and
    share the rest round robin with the other keys' batches (``others``: each key's work
    left): processor sharing ends ours once each other key has had as much as ours or
    finished. Never less than its longest item (an item runs on one worker)."""
    shared = sum(min(o, mine) for o in others)
    return round(max((interactive + mine + shared) / max(1, workers), longest), 1)


class Batches:
    """Batch records, their items, the feeder, and the batch's end."""

    def __init__(self, store: JobStore, settings: Settings) -> None:
        self.store, self.r, self.settings = store, store.r, settings
        self.ttl = settings.result_ttl_seconds + TOMBSTONE_SECONDS

    # -- submit ---------------------------------------------------------------------------
    def submit_lock(self, owner: str) -> redis.lock.Lock:
        """Held while one of ``owner``'s batches is counted against the open-items cap and
        stored, so two concurrent submits of one key cannot both pass it."""
        return self.r.lock(keys.batch_submit(owner), timeout=600, blocking_timeout=600)

    def open_items(self, owner: str) -> int:
        """``owner``'s batch items whose jobs have not ended, over all its open batches."""
        count = 0
        for bid in self._active():
            rec = self.get(bid)
            if rec is None or rec.get("owner") != owner or rec.get("status") != OPEN:
                continue
            items = [i for i in self.items(bid) if i.get("own") and i.get("job")]
            jobs = self.jobs(items)
            count += sum(1 for j in jobs if j is not None and j["status"] not in TERMINAL)
        return count

    def begin(self, batch_id: str, *, owner: str, model: str, params: dict[str, Any],
              callback_url: str | None, digest: str) -> None:
        """Store a new batch record (its items follow, one :meth:`add` each)."""
        record = {"id": batch_id, "owner": owner, "model": model, "params": params,
                  "created_at": now_iso(), "status": OPEN, "complete": False,
                  "item_count": 0, "total_passes": 0, "fed": 0, "digest": digest,
                  "callbacks": [deliveries.waiting(callback_url)] if callback_url else None,
                  "version": 1}
        pipe = self.r.pipeline()
        pipe.hset(keys.batch(batch_id), mapping=encode(record))
        pipe.expire(keys.batch(batch_id), self.ttl)
        pipe.zadd(keys.BATCHES_ACTIVE, {batch_id: time.time()})
        pipe.execute()

    def add(self, batch_id: str, item: dict[str, Any], passes: int) -> None:
        """Append one item (:func:`item_entry`) whose job needs ``passes`` forward passes."""
        pipe = self.r.pipeline()
        pipe.rpush(keys.batch_items(batch_id), json.dumps(item))
        pipe.expire(keys.batch_items(batch_id), self.ttl)
        pipe.hincrby(keys.batch(batch_id), "item_count", 1)
        pipe.hincrby(keys.batch(batch_id), "total_passes", passes)
        pipe.execute()

    def complete(self, batch_id: str) -> None:
        """Every item is stored: the batch may end now (:meth:`finalize`)."""
        self.r.hset(keys.batch(batch_id), "complete", "true")
        self.r.hincrby(keys.batch(batch_id), "version", 1)

    def drop(self, batch_id: str) -> None:
        """Forget a batch whose submit failed half-way (its stored items are canceled)."""
        for item in self.items(batch_id):
            if item.get("own") and item.get("job"):
                with suppress(redis.RedisError):
                    self.store.end(item["job"], JobStatus.CANCELED, notify=False)
        self.r.delete(keys.batch(batch_id), keys.batch_items(batch_id))
        self.r.zrem(keys.BATCHES_ACTIVE, batch_id)

    # -- reading ----------------------------------------------------------------------------
    def get(self, batch_id: str) -> dict[str, Any] | None:
        raw = self.r.hgetall(keys.batch(batch_id))
        return {k.decode(): json.loads(v) for k, v in raw.items()} if raw else None

    def items(self, batch_id: str) -> list[dict[str, Any]]:
        return [json.loads(v) for v in self.r.lrange(keys.batch_items(batch_id), 0, -1)]

    def jobs(self, items: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
        """The fields of each item's job the resource needs (None: no job, or gone)."""
        pipe = self.r.pipeline(transaction=False)
        for item in items:
            if item.get("job"):
                pipe.hmget(keys.job(item["job"]), JOB_FIELDS)
        values = iter(pipe.execute())
        out: list[dict[str, Any] | None] = []
        for item in items:
            if not item.get("job"):
                out.append(None)
                continue
            got = next(values)
            out.append(None if got[0] is None else {
                name: None if v is None else json.loads(v)
                for name, v in zip(JOB_FIELDS, got, strict=True)})
        return out

    def version(self, batch_id: str, items: list[dict[str, Any]] | None = None) -> int:
        """The batch's event version: its record's plus its items' jobs' (every write of
        either raises it)."""
        items = self.items(batch_id) if items is None else items
        pipe = self.r.pipeline(transaction=False)
        pipe.hget(keys.batch(batch_id), "version")
        for item in items:
            if item.get("job"):
                pipe.hget(keys.job(item["job"]), "version")
        return sum(int(v) for v in pipe.execute() if v is not None)

    def public(self, batch_id: str, *, workers: int | None = None) -> dict[str, Any] | None:
        """The batch resource as ``GET /v1/batches/{id}`` answers it (None if unknown)."""
        rec = self.get(batch_id)
        if rec is None:
            return None
        items = self.items(batch_id)
        jobs = self.jobs(items)
        body = self.resource(rec, items, jobs)
        if body["status"] in (QUEUED, RUNNING):
            body["eta_seconds"] = self.eta(rec, items, jobs, workers)
        return body

    def resource(self, rec: dict[str, Any], items: list[dict[str, Any]],
                 jobs: list[dict[str, Any] | None]) -> dict[str, Any]:
        """The resource from the record and its items' jobs, without an ETA."""
        shown = [item_public(i, j) for i, j in zip(items, jobs, strict=True)]
        counts = {s: 0 for s in ITEM_STATUSES}
        for i in shown:
            counts[i["status"]] = counts.get(i["status"], 0) + 1
        bid = rec["id"]
        base = f"/v1/batches/{bid}"
        return {
            "id": bid, "status": status_of(rec, shown), "model": rec.get("model", ""),
            "params": rec.get("params") or {}, "total": len(shown), "counts": counts,
            "progress": progress(items, jobs, int(rec.get("total_passes") or 0)),
            "eta_seconds": None, "created_at": rec.get("created_at"),
            "finished_at": rec.get("finished_at"), "canceled_at": rec.get("canceled_at"),
            "items": shown,
            "links": {"self": base, "results": f"{base}/results.zip",
                      "events": f"{base}/events"},
            "callbacks": rec.get("callbacks"),
        }

    def eta(self, rec: dict[str, Any], items: list[dict[str, Any]],
            jobs: list[dict[str, Any] | None], workers: int | None) -> float | None:
        """Seconds until every item has ended (:func:`fair_eta`): the interactive jobs
        queued or running, this key's open batches up to this one, and the other keys'
        batches sharing the workers round robin. None before a worker measured the
        model's rate, or while no worker is alive."""
        if workers == 0:
            return None
        rates = self.store.model_rates(rec.get("model", ""))
        mine_items = [remaining_seconds(j, rates) for i, j in zip(items, jobs, strict=True)
                      if i.get("job")]
        if any(s is None for s in mine_items):
            return None
        mine = sum(mine_items)
        others: dict[str, float] = {}
        for bid in self._active():
            if bid == rec["id"]:
                continue
            other = self.get(bid)
            if other is None or other.get("status") != OPEN:
                continue
            o_items = [i for i in self.items(bid) if i.get("own") and i.get("job")]
            left = sum(remaining_seconds(j, self.store.model_rates(other.get("model", "")))
                       or 0.0 for j in self.jobs(o_items))
            if other.get("owner") == rec.get("owner"):
                if (other.get("created_at") or "") < (rec.get("created_at") or ""):
                    mine += left  # this key's older batch is fed first
            else:
                others[other["owner"]] = others.get(other["owner"], 0.0) + left
        return fair_eta(mine, list(others.values()), self._interactive(rates),
                        workers or 1, max(mine_items, default=0.0))

    def _interactive(self, rates: dict[str, float]) -> float:
        """Seconds of interactive work queued or running (served before batches)."""
        queued = [m.decode() for m in self.r.zrange(keys.QUEUED, 0, 199)]
        running = [m.decode().partition("#")[0] for m in self.r.zrange(keys.RUNNING, 0, -1)]
        ids = sorted(set(queued) | set(running))
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.hmget(keys.job(i.partition("#")[0]), "batch", "progress_total",
                       "progress_done")
        rate = rates.get("rate")
        if not rate:
            return 0.0
        total = 0.0
        for batch, left, done in pipe.execute():
            if left is None or (batch is not None and json.loads(batch)):
                continue
            total += max(0, json.loads(left) - json.loads(done or "0")) / rate
        return total

    def _active(self) -> list[str]:
        return [m.decode() for m in self.r.zrange(keys.BATCHES_ACTIVE, 0, -1)]

    # -- the end ----------------------------------------------------------------------------
    def finalize(self, batch_id: str) -> bool:
        """End the batch as ``finished`` if every item has ended (once: the first caller;
        its callbacks' ``batch.finished`` events are written in the same transaction)."""
        rec = self.get(batch_id)
        if rec is None or rec.get("status") != OPEN or not rec.get("complete"):
            return False
        items = self.items(batch_id)
        jobs = self.jobs(items)
        if any(j is not None and j["status"] not in TERMINAL for j in jobs):
            return False
        return self._end(batch_id, FINISHED, rec, items, jobs, {})

    def cancel(self, batch_id: str) -> bool:
        """``DELETE``: cancel every item this batch created that has not ended (a running
        one stops within one batch of passes), then end the batch ``canceled``. Finished
        items keep their results until they expire; an item that repeats an existing job
        (deduplicated) is that job, which is not canceled. False if the batch had ended."""
        from . import lifecycle  # lifecycle does not know batches

        rec = self.get(batch_id)
        if rec is None or rec.get("status") != OPEN:
            return False
        self.r.hset(keys.batch(batch_id), "canceling", "true")  # the feeder stops feeding it
        queue = batch_queue(self.settings, self.r)
        items = self.items(batch_id)
        for item in items:
            if not (item.get("own") and item.get("job")):
                continue
            job = self.store.get(item["job"])
            if job is not None and job.status.active:
                lifecycle.cancel(self.store, queue, job)
        jobs = self.jobs(items)
        return self._end(batch_id, CANCELED, rec, items, jobs, {"canceled_at": now_iso()})

    def _end(self, batch_id: str, status: str, rec: dict[str, Any],
             items: list[dict[str, Any]], jobs: list[dict[str, Any] | None],
             fields: dict[str, Any]) -> bool:
        key = keys.batch(batch_id)

        def write(pipe: redis.client.Pipeline) -> bool:
            current, raw_cbs, version = pipe.hmget(key, "status", "callbacks", "version")
            if current is None or json.loads(current) != OPEN:
                return False
            now = time.time()
            mapping: dict[str, Any] = {"status": status, "finished_at": now_iso(now),
                                       **fields}
            entries = json.loads(raw_cbs) if raw_cbs else None
            shown = None
            if entries and any(e.get("status") == deliveries.WAITING for e in entries):
                shown = deliveries.new_events(entries, EVENTS[status], now)
                mapping["callbacks"] = shown
            data = self.resource({**rec, **mapping, "status": status}, items, jobs)
            pipe.multi()
            pipe.hset(key, mapping=encode(mapping))
            pipe.hincrby(key, "version", 1)
            pipe.zrem(keys.BATCHES_ACTIVE, batch_id)
            if shown is not None:
                deliveries.queue_events(pipe, self.r, self.store.callback_queue, entries,
                                        shown, subject="batch", subject_id=batch_id,
                                        data=data, mirror=key, now=now)
            return True

        return self.r.transaction(write, key, value_from_callable=True)

    # -- the feeder -------------------------------------------------------------------------
    def feed(self) -> list[str]:
        """Enqueue batch items on the batch queue until it holds PDA_BATCH_IN_FLIGHT
        messages, round robin across the owners of open batches (the one fed longest ago
        first; an owner's batches oldest first). One feeder at a time (a lock: a caller
        that finds it held returns at once, the holder feeds). Returns the job ids fed."""
        if not self.r.zcard(keys.BATCHES_ACTIVE):
            return []
        lock = self.r.lock(keys.BATCHES_FEED_LOCK, timeout=30)
        if not lock.acquire(blocking=False):
            return []
        try:
            return self._feed()
        finally:
            with suppress(redis.exceptions.LockError):
                lock.release()

    def _feed(self) -> list[str]:
        queue = batch_queue(self.settings, self.r)
        room = self.settings.batch_in_flight - queue.count
        if room <= 0:
            return []
        by_owner: dict[str, list[list[Any]]] = {}
        for bid in self._active():
            rec = self.get(bid)
            if rec is None:
                self.r.zrem(keys.BATCHES_ACTIVE, bid)
                continue
            if rec.get("status") != OPEN or rec.get("canceling"):
                continue
            count = self.r.llen(keys.batch_items(bid))
            if int(rec.get("fed") or 0) < count:
                by_owner.setdefault(rec["owner"], []).append([bid, int(rec.get("fed") or 0),
                                                              count])
        turns = {k.decode(): int(v) for k, v in self.r.hgetall(keys.BATCHES_TURNS).items()}
        fed: list[str] = []
        while room > 0 and by_owner:
            owner = min(by_owner, key=lambda o: (turns.get(o, 0), o))
            entry = by_owner[owner][0]
            bid, pos, count = entry
            if pos >= count:
                by_owner[owner].pop(0)
                if not by_owner[owner]:
                    del by_owner[owner]
                continue
            raw = self.r.lindex(keys.batch_items(bid), pos)
            job_id = self._enqueue(json.loads(raw), queue) if raw else None
            self.r.hincrby(keys.batch(bid), "fed", 1)
            entry[1] += 1
            if job_id is not None:
                turns[owner] = self.r.incr(keys.BATCHES_TURN)
                self.r.hset(keys.BATCHES_TURNS, owner, turns[owner])
                fed.append(job_id)
                room -= 1
        return fed

    def _enqueue(self, item: dict[str, Any], queue: Any) -> str | None:
        """Enqueue the item's job if it is this batch's and still waits to be fed."""
        job_id = item.get("job")
        if not (item.get("own") and job_id):
            return None
        rec = self.store.get(job_id)
        if rec is None or rec.status != JobStatus.QUEUED or \
                message_pending(self.r, rq_job_id(job_id, rec.attempt)):
            return None
        # indexed first: a crash before the message is enqueued is then a lost message,
        # which the workers' repair (lifecycle.requeue_lost) enqueues again
        self.r.zadd(keys.QUEUED, {job_id: time.time()})
        enqueue_attempt(queue, self.settings, job_id, rec.attempt, rec.planned_passes)
        return job_id

    def backlog(self) -> int:
        """Batch items waiting to be fed, over the open batches; mirrored as the length of
        the list ``batches:backlog`` (at most :data:`BACKLOG_CAP`), which the KEDA
        ScaledObject scales the workers on (k8s/base/worker-scaledobject.yaml)."""
        waiting = 0
        for bid in self._active():
            rec = self.get(bid)
            if rec is None or rec.get("status") != OPEN or rec.get("canceling"):
                continue
            waiting += max(0, self.r.llen(keys.batch_items(bid)) - int(rec.get("fed") or 0))
        shown = min(waiting, BACKLOG_CAP)
        if self.r.llen(keys.BATCHES_BACKLOG) != shown:
            pipe = self.r.pipeline()
            pipe.delete(keys.BATCHES_BACKLOG)
            if shown:
                pipe.rpush(keys.BATCHES_BACKLOG, *([b"1"] * shown))
            pipe.execute()
        return waiting

    def tick(self) -> list[str]:
        """What a worker does between jobs and in its maintenance pass: end the batches
        whose items have all ended, then feed the batch queue. Returns the jobs fed."""
        for bid in self._active():
            try:
                self.finalize(bid)
            except redis.exceptions.WatchError:  # another caller ended it meanwhile
                pass
        fed = self.feed()
        self.backlog()
        return fed
