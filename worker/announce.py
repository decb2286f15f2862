"""Workers tell the API what they can serve: published model metadata (pda.catalog).

At start a worker publishes, for every built-in, whether its weights are installed here;
whenever it loads a model it publishes the model's full description (input size,
classes, layers with channels), which is how the API learns the layers of a user model
file and can refuse a bad ``layer``/``target`` at submit. All workers of one queue are
expected to serve the same models: the last one to speak is believed.
"""

from __future__ import annotations

import logging
import threading

import redis

from pda import catalog
from pda.models.describe import describe
from pda.models.registry import LoadedModel
from pda.settings import Settings

log = logging.getLogger("pda.worker")
_described: set[str] = set()
_lock = threading.Lock()


def announce_builtins(conn: redis.Redis, settings: Settings) -> None:
    """Publish whether each built-in's weights are installed where this worker runs."""
    for name in catalog.BUILTIN_NAMES:
        if name in _described:
            continue
        here = catalog.find_weights(name, settings) is not None
        doc = {"name": name, "available": here}
        if not here:
            doc["install"] = catalog.install_hint(name, settings)
        catalog.publish(conn, doc)


def announce_model(conn: redis.Redis, model: LoadedModel, description: str = "") -> None:
    """Publish a loaded model's description, once per model and process."""
    with _lock:
        if model.name in _described:
            return
        _described.add(model.name)
    try:
        catalog.publish(conn, {**describe(model, description), "available": True})
    except Exception as exc:  # metadata is a convenience for the API: never fail a job
        log.warning("could not publish the metadata of %s: %s", model.name, exc)
        with _lock:
            _described.discard(model.name)
