"""``pda worker`` made slow or stuck on purpose, for the liveness tests (test_liveness.py).

A real worker process whose forward batches sleep first: a machine many times slower
than the old timeouts assumed, costing the shared test machine no CPU. Environment:

- ``PDA_TEST_BATCH_DELAY``: seconds each sweep batch sleeps before its forward pass
- ``PDA_TEST_HANG_AT``: the Nth batch of this process hangs (a stuck forward)
- ``PDA_TEST_MERGE_DELAY``: seconds a split job's merge sleeps (without progress)
- ``PDA_TEST_MERGE_FAIL``: every merge raises (a crash: retried, then the job fails)
- ``PDA_TEST_STEP_DELAY``: seconds each step of a run's set-up sleeps first (a slow
  preparation: a model converting, a sampler factorising)
- ``PDA_TEST_OOM_AT``: the Nth batch of this process raises MemoryError (a deterministic
  failure: never retried)

Needs ``PDA_BACKEND=torch`` and ``PDA_INCREMENTAL=off``: the batches it slows are the
full images of the plain sweep.
"""

from __future__ import annotations

import os
import sys
import time

import pda.engine.explain as explain
import pda.engine.sweep as sweep
import worker.tasks as tasks
from pda.cli import main

DELAY = float(os.environ.get("PDA_TEST_BATCH_DELAY", "0"))
HANG_AT = int(os.environ.get("PDA_TEST_HANG_AT", "0"))
MERGE_DELAY = float(os.environ.get("PDA_TEST_MERGE_DELAY", "0"))
MERGE_FAIL = os.environ.get("PDA_TEST_MERGE_FAIL") == "1"
OOM_AT = int(os.environ.get("PDA_TEST_OOM_AT", "0"))
STEP_DELAY = float(os.environ.get("PDA_TEST_STEP_DELAY", "0"))
_batch = sweep._perturbed_batch
_merge = tasks.merge_partials
_step = explain.Run._step
_count = [0]


def slowed_batch(*args, **kwargs):  # noqa: ANN002, ANN003, ANN201 (a transparent wrapper)
    _count[0] += 1
    if _count[0] == HANG_AT:
        time.sleep(10**6)
    if _count[0] == OOM_AT:
        raise MemoryError("Unable to allocate 38.7 GiB for an array (a test's stand-in)")
    time.sleep(DELAY)
    return _batch(*args, **kwargs)


def slowed_merge(*args, **kwargs):  # noqa: ANN002, ANN003, ANN201
    if MERGE_FAIL:
        raise RuntimeError("this merge always fails")
    time.sleep(MERGE_DELAY)
    return _merge(*args, **kwargs)


def slowed_step(self, name):  # noqa: ANN001, ANN201
    time.sleep(STEP_DELAY)
    return _step(self, name)


sweep._perturbed_batch = slowed_batch
explain.Run._step = slowed_step
tasks.merge_partials = slowed_merge

if __name__ == "__main__":
    sys.exit(main(["worker"]))
