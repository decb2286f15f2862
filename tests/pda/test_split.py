"""A sweep cut into chunks of whole window blocks and merged gives the one-process map.

The queue-level tests (real workers, real Redis) are in tests/worker/test_chunks.py;
these pin the engine's half: partial sums packed, merged in window order, concluded.
"""

from __future__ import annotations

import pytest
import torch

from pda.engine.explain import Run, explain
from pda.engine.sweep import merge_partials, pack_partial
from pda.grid import BLOCK_WINDOWS
from pda.jobs.chunks import split
from pda.params import ExplainParams
from pda.runtime import Runtime
from tests.support.toys import ConvNet, random_stats, wrap


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    return wrap(ConvNet(classes=5), 32, classes=5)


@pytest.mark.parametrize("sampler", ["conditional", "marginal", "constant"])
@pytest.mark.parametrize("layer", ["output", "logits"])
def test_chunked_map_equals_one_process_map(model, sampler, layer):
    stats = random_stats()
    params = ExplainParams(window=4, stride=1, samples=3, sampler=sampler, layer=layer,
                           target="top2", seed=11)
    x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(5))
    whole = explain(model, x, params, stats, runtime=Runtime(batch_size=16, backend="torch"))

    run = Run(model, x, params, stats, runtime=Runtime(batch_size=7, backend="torch"))
    n_w = 29 * 29
    ranges = split(n_w, chunk_passes=3 * BLOCK_WINDOWS * 3, passes_per_window=3)
    assert len(ranges) == 5 and ranges[0] == (0, 192)  # 3 blocks of 64 windows per chunk
    parts = [pack_partial(run.sweep((a, b))) for a, b in ranges]
    # any order of arrival; the merge scores a merged map as explain() scores its own
    merged = run.explain(swept=merge_partials(parts[::-1], n_w))

    peak = abs(whole.relevance).max()
    assert peak > 0
    assert abs(merged.relevance - whole.relevance).max() <= 1e-5 * peak
    assert (merged.counts == whole.counts).all()
    assert merged.forward_passes == whole.forward_passes
    assert merged.faithfulness_passes == whole.faithfulness_passes > 0
    assert merged.targets == whole.targets


def test_a_chunk_missing_or_twice_is_refused(model):
    params = ExplainParams(window=4, stride=2, samples=2, seed=1)
    x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2))
    run = Run(model, x, params, random_stats(), runtime=Runtime(batch_size=8, backend="torch"))
    a = pack_partial(run.sweep((0, 100)))
    b = pack_partial(run.sweep((100, 225)))
    assert merge_partials([a, b], 225).window_means.shape[0] == 225
    with pytest.raises(ValueError, match="exactly once"):
        merge_partials([a], 225)
    with pytest.raises(ValueError, match="exactly once"):
        merge_partials([a, a, b], 225)


def test_fixed_targets_are_kept(model):
    """Chunks reuse the planning run's targets rather than choosing their own."""
    params = ExplainParams(window=4, stride=4, samples=1, target="top1")
    x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(4))
    run = Run(model, x, params, random_stats(), targets=[4, 0], runtime=Runtime(backend="torch"))
    assert run.setup.targets == [4, 0]
