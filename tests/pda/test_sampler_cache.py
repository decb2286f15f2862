"""The process's cache of sampler factors (pda.engine.cache): bounded in bytes whatever
the windows, shared across jobs, kept on disk for other processes, and a set-up that runs
out of memory fails as a named, deterministic error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pda.engine import cache as cache_module
from pda.engine import samplers, stationary
from pda.engine.cache import CACHE, ByteCache, configure
from pda.engine.geometry import window_positions
from pda.engine.samplers import ConditionalSampler, make_sampler
from pda.errors import PDAError, SamplerMemoryError
from pda.problems import job_problem, to_problem
from tests.support.toys import random_stats


@pytest.fixture
def small_cache():
    """The process cache at a test's bound, restored (and emptied) afterwards."""
    before = CACHE.max_bytes
    CACHE.clear()
    yield
    configure(before)
    CACHE.clear()


def test_the_lru_drops_the_least_recently_used_first_and_keeps_nothing_over_its_bound():
    c = ByteCache(max_bytes=3000)
    c.put("a", np.zeros(100))  # 800 bytes each
    c.put("b", np.zeros(100))
    c.put("c", np.zeros(100))
    assert c.get("a") is not None  # a is now the most recent
    c.put("d", np.zeros(100))  # 3200 > 3000: b goes
    assert "b" not in c and {"a", "c", "d"} <= set(c._items)
    assert c.total_bytes == 2400
    c.put("huge", np.zeros(1000))  # 8000 bytes: computed by its caller, never kept
    assert "huge" not in c and c.total_bytes == 2400


def test_many_window_sizes_never_hold_more_than_the_bound(small_cache):
    bound = 3 * 2**20
    configure(bound)
    stats = random_stats()
    x = torch.rand(3, 48, 48)
    held = []
    for k in range(3, 30, 2):  # 14 window sizes, stationary and their factors
        for p in (1, 2):
            s = make_sampler("conditional", x, k, window_positions(48, 48, k, 5), stats,
                             padding=p)
            s.sample(torch.arange(4), 1, torch.Generator().manual_seed(0))
            assert CACHE.total_bytes <= bound
            held.append(CACHE.total_bytes)
    assert max(held) > bound // 2  # the bound was reached, not merely never approached
    assert len(CACHE) > 0


def test_a_second_sampler_of_the_same_window_reuses_the_factors(small_cache, monkeypatch):
    configure(64 * 2**20)
    stats = random_stats()
    x = torch.rand(3, 40, 40)
    pos = window_positions(40, 40, 9, 3)
    first = make_sampler("conditional", x, 9, pos, stats, padding=2)

    def refactorise(*_a, **_k):
        raise AssertionError("factorised again")

    monkeypatch.setattr(stationary, "ring_inverse", refactorise)
    monkeypatch.setattr(stationary.torch.linalg, "cholesky", refactorise)
    second = make_sampler("conditional", torch.rand(3, 40, 40), 9, pos, stats, padding=2)
    assert second.P is first.P  # the same tensor, not a copy


@pytest.mark.parametrize("dense", [False, True])
def test_a_disk_hit_in_a_fresh_cache_gives_identical_factors(small_cache, tmp_path,
                                                             monkeypatch, dense):
    configure(64 * 2**20, tmp_path, 2**30)
    try:
        stats = random_stats()
        if dense:  # a stored fit: the dense path's factors per geometry
            stats.set_gaussian(13, *stats.gaussian(13))
        x = torch.rand(3, 40, 40)
        pos = window_positions(40, 40, 9, 3)
        first = make_sampler("conditional", x, 9, pos, stats, padding=2)
        assert isinstance(first, ConditionalSampler) == dense
        assert len(list(tmp_path.glob("*.pt"))) > 1
        CACHE.clear()  # as a new worker process starts

        def refactorise(*_a, **_k):
            raise AssertionError("recomputed instead of read from disk")

        monkeypatch.setattr(stationary, "ring_inverse", refactorise)
        monkeypatch.setattr(stationary.torch.linalg, "cholesky", refactorise)
        monkeypatch.setattr(ConditionalSampler, "_factorise", refactorise)
        second = make_sampler("conditional", x, 9, pos, stats, padding=2)
        if dense:
            for a, b in zip(first._factors, second._factors, strict=True):
                assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
        else:
            assert torch.equal(first.P, second.P)
            for (_, fa), (_, fb) in zip(first._missing, second._missing, strict=True):
                assert (fa is None and fb is None) or torch.equal(fa, fb)
        gen = [torch.Generator().manual_seed(4) for _ in range(2)]
        ids = torch.arange(len(pos))
        assert torch.equal(first.sample(ids, 2, gen[0]), second.sample(ids, 2, gen[1]))
    finally:
        configure(CACHE.max_bytes)  # memory only again


def test_a_torn_disk_file_is_a_miss_not_a_failure(small_cache, tmp_path):
    configure(64 * 2**20, tmp_path, 2**30)
    try:
        stats = random_stats()
        x = torch.rand(3, 40, 40)
        pos = window_positions(40, 40, 9, 3)
        first = make_sampler("conditional", x, 9, pos, stats, padding=2)
        for f in tmp_path.glob("*.pt"):
            f.write_bytes(f.read_bytes()[:50])
        CACHE.clear()
        second = make_sampler("conditional", x, 9, pos, stats, padding=2)
        assert torch.equal(first.P, second.P)
    finally:
        configure(CACHE.max_bytes)


def test_the_disk_folder_is_pruned_to_its_bound(small_cache, tmp_path):
    configure(64 * 2**20, tmp_path, 200_000)
    try:
        stats = random_stats()
        x = torch.rand(3, 40, 40)
        for k in (5, 7, 9, 11, 13):
            make_sampler("conditional", x, k, window_positions(40, 40, k, 3), stats,
                         padding=2)
            assert sum(f.stat().st_size for f in tmp_path.glob("*.pt")) <= 200_000
    finally:
        configure(CACHE.max_bytes)


@pytest.mark.parametrize("error", [
    MemoryError("Unable to allocate 38.7 GiB"),
    RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB"),
])
def test_running_out_of_memory_in_set_up_is_a_named_deterministic_error(monkeypatch, error):
    def boom(*_a, **_k):
        raise error

    monkeypatch.setattr(samplers, "StationarySampler", boom)
    with pytest.raises(SamplerMemoryError, match="window 200, padding 2.*sampler=marginal"):
        make_sampler("conditional", torch.rand(3, 224, 224), 200,
                     window_positions(224, 224, 200, 8), random_stats(side=256), padding=2)
    exc = SamplerMemoryError("ran out")
    assert isinstance(exc, PDAError)  # a caller-fixable, deterministic failure
    assert to_problem(exc)["type"] == "/problems/sampler-memory"
    assert job_problem(exc)["status"] == 422  # a failed job says so, not a 500


def test_other_runtime_errors_are_not_taken_for_memory(monkeypatch):
    def boom(*_a, **_k):
        raise RuntimeError("a real bug")

    monkeypatch.setattr(samplers, "StationarySampler", boom)
    with pytest.raises(RuntimeError, match="a real bug"):
        make_sampler("conditional", torch.rand(3, 32, 32), 8,
                     window_positions(32, 32, 8, 8), random_stats(), padding=2)


def test_configure_evicts_at_once(small_cache):
    CACHE.put(("x",), np.zeros(10_000))
    configure(1000)
    assert CACHE.total_bytes == 0 and len(CACHE) == 0
    assert cache_module._disk is None
