"""The sampler cost model (pda.costs): it counts the engine's geometries, refuses what would
not finish on a worker naming the limit and what fits instead, and a large window it
accepts finishes within the memory it promised."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from pda import cli
from pda.costs import (
    DEFAULT_PATCH_SIZES,
    SETUP_SECONDS_TARGET,
    WORKER_BASE_BYTES,
    check_job,
    geometries,
    sampler_cost,
    stored_patch_sizes,
)
from pda.engine.geometry import window_positions
from pda.engine.samplers import border_clips
from pda.errors import SamplerLimitError
from pda.params import ExplainParams
from tests.support.paths import CAT, ROOT

GIB = 2**30
LIMITS = {"memory_bytes": 4 * GIB, "cache_bytes": GIB // 2}  # the k8s worker, the default


@pytest.mark.parametrize("size,k,s,p", [(224, 32, 8, 2), (224, 10, 1, 2), (224, 200, 3, 2),
                                        (64, 4, 5, 16), (100, 7, 3, 3), (50, 50, 1, 0)])
def test_the_model_counts_the_engines_border_geometries(size, k, s, p):
    pos = window_positions(size, size, k, s)
    engine = {tuple(c) for c in border_clips(pos, k, p, size, size).tolist()}
    assert set(geometries((size, size), k, s, p)) == engine


@pytest.mark.parametrize("window,padding,stride,path", [
    (10, 2, 1, "dense"),  # the paper's: a stored fit, 25 cheap geometries
    (30, 3, 1, "stationary"),  # l = 36 is stored, but 49 geometries of 900 px are not cheap
    (56, 2, 56, "stationary"),  # no stored fit
])
def test_the_engine_takes_the_path_the_model_priced(window, padding, stride, path):
    from pda.engine.samplers import make_sampler
    from pda.engine.stats import get_stats

    cost = sampler_cost("conditional", window, padding, stride, 2, (224, 224))
    sampler = make_sampler("conditional", torch.rand(3, 224, 224), window,
                           window_positions(224, 224, window, stride), get_stats(),
                           padding=padding)
    assert cost.path == path
    assert type(sampler).__name__ == {"dense": "ConditionalSampler",
                                      "stationary": "StationarySampler"}[path]
    assert sampler.geometries == cost.geometries


def test_the_model_reads_which_fits_a_statistics_file_stores(tmp_path):
    from tests.support.toys import random_stats

    random_stats().save(tmp_path / "s.npz", patch_sizes=[20])
    assert stored_patch_sizes(tmp_path / "s.npz") == (20,)
    assert stored_patch_sizes(None) == DEFAULT_PATCH_SIZES == (14, 36)
    params = ExplainParams(window=16)
    assert check_job(params, (224, 224), **LIMITS).path == "stationary"  # built-in file
    assert check_job(params, (224, 224), **LIMITS, stats_path=tmp_path / "s.npz").path == "dense"
    default = ExplainParams()  # l = 36 is not in that file: the stationary model serves it
    assert check_job(default, (224, 224), **LIMITS, stats_path=tmp_path / "s.npz").path == (
        "stationary")


def test_the_readmes_quick_settings_and_window_200_are_accepted_on_a_4_gib_worker():
    quick = check_job(ExplainParams(window=56, stride=56, samples=1), (224, 224), **LIMITS)
    assert quick.path == "stationary" and quick.setup_seconds < 2
    big = check_job(ExplainParams(window=200, stride=1), (224, 224), **LIMITS)
    assert big.path == "stationary" and big.setup_seconds < SETUP_SECONDS_TARGET
    assert big.peak_bytes < 4 * GIB - WORKER_BASE_BYTES - GIB // 2
    default = check_job(ExplainParams(), (224, 224), **LIMITS)
    assert default.path == "dense" and 32 + 4 in DEFAULT_PATCH_SIZES


def test_a_worker_too_small_for_window_200_refuses_it_naming_the_limit_and_what_fits():
    with pytest.raises(SamplerLimitError) as e:
        check_job(ExplainParams(window=200), (224, 224),
                      memory_bytes=WORKER_BASE_BYTES + GIB // 2 + 300 * 2**20,
                      cache_bytes=GIB // 2)
    msg = str(e.value)
    assert "PDA_WORKER_MEMORY_BYTES" in msg and "sampler=marginal" in msg
    window = int(msg.split("window <= ")[1].split(",")[0].split(";")[0])
    assert 32 < window < 200
    # what it names instead is accepted
    check_job(ExplainParams(window=window), (224, 224),
                  memory_bytes=WORKER_BASE_BYTES + GIB // 2 + 300 * 2**20, cache_bytes=GIB // 2)
    assert e.value.extra["limit_bytes"] == WORKER_BASE_BYTES + GIB // 2 + 300 * 2**20


def test_a_wide_ring_is_refused_by_the_set_up_time_and_a_narrower_one_named():
    with pytest.raises(SamplerLimitError, match=r"about \d+ s on 2 cores.*padding <= (\d+)") as e:
        check_job(ExplainParams(window=10, padding=32), (224, 224), **LIMITS)
    padding = int(str(e.value).split("padding <= ")[1].split(",")[0])
    assert 2 <= padding < 32
    check_job(ExplainParams(window=10, padding=padding), (224, 224), **LIMITS)


def test_a_patch_larger_than_the_reference_images_is_refused():
    with pytest.raises(SamplerLimitError, match="264 exceeds the 256 px reference"):
        check_job(ExplainParams(window=224, padding=20), (224, 224), **LIMITS)
    check_job(ExplainParams(window=224, padding=20, sampler="marginal"), (224, 224),
                  **LIMITS)


@pytest.mark.parametrize("sampler", ["conditional", "marginal", "constant"])
def test_a_large_window_at_stride_1_is_refused_for_its_maps_whatever_the_sampler(sampler):
    # 5,625 windows x 150^2 pixels x (3 targets + a count) in float64: 4 GB before fold
    # sums them (measured: pda explain --window 150 --stride 1 --samples 1 peaked at
    # 4.9 GB of RSS on the shipped engine)
    with pytest.raises(SamplerLimitError, match=r"\(sampler and maps\).*stride >= 2") as e:
        check_job(ExplainParams(window=150, stride=1, samples=1, sampler=sampler),
                  (224, 224), **LIMITS)
    assert "sampler=marginal" not in str(e.value)  # it would not help
    check_job(ExplainParams(window=150, stride=2, samples=1, sampler=sampler), (224, 224),
              **LIMITS)
    one = check_job(ExplainParams(window=150, stride=2, samples=1, sampler=sampler,
                                  target="0"), (224, 224), **LIMITS)
    three = check_job(ExplainParams(window=150, stride=2, samples=1, sampler=sampler),
                      (224, 224), **LIMITS)
    assert three.maps_bytes == 2 * one.maps_bytes  # targets + a count


def test_many_samples_of_a_large_window_are_refused_for_any_sampler_but_constant():
    for sampler in ("conditional", "marginal"):
        with pytest.raises(SamplerLimitError, match="samples <= "):
            check_job(ExplainParams(window=100, samples=1000, sampler=sampler),
                          (224, 224), **LIMITS)
    check_job(ExplainParams(window=100, samples=1000, sampler="constant"), (224, 224),
                  **LIMITS)


def test_the_cli_refuses_the_same_job_in_one_line_before_any_work(capsys, tmp_path):
    code = cli.main(["explain", str(CAT), "--window", "10", "--padding", "32",
                     "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "the target is 10 s" in err and "sampler=marginal" in err
    assert not (tmp_path / "out").exists()


PROBE = textwrap.dedent("""
    import json, os, sys, threading, time
    import torch
    sys.path.insert(0, sys.argv[1])
    from pda.engine.explain import explain
    from pda.engine.geometry import window_positions
    from pda.engine.samplers import make_sampler
    from pda.engine.stats import get_stats
    from pda.params import ExplainParams
    from pda.runtime import Runtime
    from tests.support.toys import LinearModel, wrap

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    peak = [0]
    def poll():  # ru_maxrss would not rise above the statistics' own earlier peak
        while True:
            peak[0] = max(peak[0], rss())
            time.sleep(0.0005)

    sampler, window, stride, engine = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    torch.manual_seed(0)
    torch.set_num_threads(2)
    stats = get_stats()
    stats.autocovariance()  # once per statistics file: part of a worker's base
    x = torch.rand(3, 224, 224)
    runtime = Runtime(backend="torch", batch_size=8)
    model = wrap(LinearModel(torch.rand(224, 224) / 1000), 224)
    explain(model, x, ExplainParams(sampler="constant", window=window, stride=224,
            target="0", faithfulness=False), stats, runtime=runtime)  # the engine, warm
    before = peak[0] = rss()
    threading.Thread(target=poll, daemon=True).start()
    if engine == "engine":
        params = ExplainParams(sampler=sampler, window=window, stride=stride, samples=2,
                               target="0", faithfulness=False, seed=1)
        finite = bool(torch.isfinite(torch.as_tensor(
            explain(model, x, params, stats, runtime=runtime).relevance)).all())
    else:  # the sampler alone: set-up and two blocks of the sweep
        s = make_sampler(sampler, x, window, window_positions(224, 224, window, stride), stats)
        for block in range(2):
            finite = bool(torch.isfinite(s.sample(torch.arange(64 * block, 64 * block + 64),
                                                  2, torch.Generator().manual_seed(0))).all())
    time.sleep(0.01)
    print(json.dumps({"grew": peak[0] - before, "finite": finite}))
""")


@pytest.mark.parametrize("sampler,window,stride,engine", [
    ("conditional", 150, 37, "engine"),  # through the whole engine, a toy model
    ("marginal", 150, 37, "engine"),
    ("conditional", 200, 1, "sampler"),  # the most border geometries of the largest window
])
def test_a_large_accepted_window_finishes_within_the_memory_it_was_accepted_with(
        sampler, window, stride, engine):
    params = ExplainParams(sampler=sampler, window=window, stride=stride, samples=2)
    cost = check_job(params, (224, 224), **LIMITS)
    out = subprocess.run([sys.executable, "-c", PROBE, str(ROOT), sampler, str(window),
                          str(stride), engine], capture_output=True, text=True, timeout=600,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["finite"]
    # the process grew by no more than the model's peak for this sampler (and 64 MB for
    # the engine's own batches of 8 images), so the worker bound holds
    assert got["grew"] <= cost.peak_bytes + 64 * 2**20, (got, cost)


def test_a_stationary_window_costs_less_than_the_dense_fit_would():
    # window 56 (l = 60): the dense path would hold 3 x 3600^2 float64 before factorising
    c = sampler_cost("conditional", 56, 2, 56, 1, (224, 224))
    assert c.path == "stationary" and c.held_bytes < 3 * 3600**2 * 8 / 4
    assert torch.get_num_threads() >= 1  # torch is only for the engine side of this file
