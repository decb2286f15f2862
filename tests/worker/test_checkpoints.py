"""A whole job's sweep checkpointed into a real Redis, interrupted, and resumed
(pda.engine.explain.Run with pda.jobs.attempts.JobCheckpoints): the resumed map is the
uninterrupted one, only the attempt holding the job writes, and the checkpoints go when
the job ends. The same with real worker processes (SIGKILL at ~70 %) is in
tests/worker/test_liveness.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pda.engine import explain as checkpoints  # segments, SEGMENT_PASSES
from pda.engine.explain import Run, conclude
from pda.grid import BLOCK_WINDOWS
from pda.jobs.attempts import JobCheckpoints
from pda.jobs.record import JobRecord, JobStatus
from pda.jobs.store import JobStore, checkpoint_key
from pda.params import ExplainParams
from pda.runtime import Runtime
from tests.support.toys import ConvNet, random_stats, wrap


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(3)
    model = wrap(ConvNet(classes=5), 32, classes=5)
    params = ExplainParams(window=4, stride=1, samples=2, sampler="marginal", target="top2",
                           seed=7, faithfulness=False)
    x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(5))
    return Run(model, x, params, random_stats(),
               runtime=Runtime(batch_size=16, backend="torch"))  # 841 windows, 1682


def running_job(store: JobStore, attempt: int = 1) -> str:
    rec = JobRecord(id="j", status=JobStatus.RUNNING, owner="o", attempt=attempt)
    store.create(rec, b"img", 600)
    return rec.id


class Recorded(JobCheckpoints):
    """The job store's checkpoints, remembering what the run said it restored."""

    def __init__(self, store: JobStore, job_id: str, attempt: int) -> None:
        super().__init__(store, store.get(job_id), attempt)
        self.restored: list[int] = []

    def resumed(self, passes: int) -> None:
        self.restored.append(passes)
        super().resumed(passes)


def sweeping(progress):
    """A run's report that passes the sweep's (done, total) on to ``progress``."""
    def report(s) -> None:
        if s.phase == "sweeping":
            progress(s.phase_done, s.phase_total)
    return report


def test_segments_are_whole_blocks_covering_the_grid_in_order():
    for n_w, per in ((625, 4), (46_225, 10), (196, 1), (30, 3)):
        plan = checkpoints.segments(n_w, per)
        assert plan[0][0] == 0 and plan[-1][1] == n_w
        assert all(a == b for (_, a), (b, _) in zip(plan, plan[1:], strict=False))
        assert all(a % BLOCK_WINDOWS == 0 for a, _ in plan)
    assert len(checkpoints.segments(625, 4)) == 10  # the default job: every block
    paper = checkpoints.segments(46_225, 10)
    assert 50 < len(paper) < 150  # about every SEGMENT_PASSES passes
    assert checkpoints.SEGMENT_PASSES <= paper[0][1] * 10 < 2 * checkpoints.SEGMENT_PASSES


def test_an_interrupted_sweep_resumes_from_its_checkpoints_to_the_same_map(clean_redis,
                                                                           setup):
    store = JobStore(clean_redis)
    job_id = running_job(store)
    run = setup
    whole = conclude(run.setup, run.sweep())
    seen: list[tuple[int, int]] = []

    def stop_at_70(done: int, total: int) -> None:
        seen.append((done, total))
        if done >= 0.7 * total:
            raise Interrupt

    run.report = sweeping(stop_at_70)
    with pytest.raises(Interrupt):
        run.sweep(checkpoints=Recorded(store, job_id, 1))
    total = seen[-1][1]
    kept = store.field(job_id, "checkpoint_passes")
    assert 0.6 * total <= kept < 0.7 * total
    # attempt 1 was taken over: it may not add checkpoints any more
    assert store.requeued(job_id, 2, "worker_lost") and store.mark_running(job_id, "w", 2)
    assert not JobCheckpoints(store, store.get(job_id), 1).save((0, 64), b"stale", 64)

    resumed_seen: list[int] = []
    second = Recorded(store, job_id, 2)
    run.report = sweeping(lambda d, t: resumed_seen.append(d))
    sweep = run.sweep(checkpoints=second)
    run.report = None
    restored = second.restored
    assert restored == [kept] and resumed_seen[0] == kept and resumed_seen[-1] == total
    again = conclude(run.setup, sweep)
    assert sweep.forward_passes == total
    np.testing.assert_allclose(again.relevance, whole.relevance, rtol=1e-5, atol=1e-6)
    assert np.array_equal(again.counts, whole.counts)

    nbytes = int(clean_redis.memory_usage(checkpoint_key(job_id)))
    assert nbytes < 1_500_000
    store.finish(job_id, {"document.json": b"{}"}, 2)
    assert not clean_redis.exists(checkpoint_key(job_id))  # deleted with the job's work


def test_a_small_job_is_one_segment_and_writes_no_checkpoint(clean_redis):
    torch.manual_seed(3)
    model = wrap(ConvNet(classes=5), 32, classes=5)
    params = ExplainParams(window=8, stride=8, samples=2, sampler="marginal",
                           faithfulness=False)
    small = Run(model, torch.rand(3, 32, 32), params, random_stats(),
                runtime=Runtime(batch_size=16, backend="torch"))
    store = JobStore(clean_redis)
    job_id = running_job(store)
    small.sweep(checkpoints=Recorded(store, job_id, 1))
    assert not clean_redis.exists(checkpoint_key(job_id))
