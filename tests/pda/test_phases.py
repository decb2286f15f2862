"""Every phase of a job on its fast backend, counted up front: the faithfulness scores run
through the sweep's execution backend (equal to eager torch's to float rounding, and the
result says which backend ran them), and the pass count the API makes at submit
(:func:`pda.params.plan`) is exactly what the engine then runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pda.document import result_document
from pda.engine.backends import openvino_backend
from pda.engine.explain import explain
from pda.params import ExplainParams, plan
from pda.runtime import Runtime
from tests.support.toys import ConvNet, wrap

needs_openvino = pytest.mark.skipif(not openvino_backend.available(),
                                    reason="openvino is not installed")


def _case(size: int = 24, classes: int = 4):
    torch.manual_seed(0)
    model = wrap(ConvNet(classes=classes), size, classes=classes)
    x = torch.rand(3, size, size, generator=torch.Generator().manual_seed(3))
    return model, x


@needs_openvino
def test_the_scores_run_on_the_sweeps_backend_and_equal_torchs():
    from tests.support.toys import random_stats

    model, x = _case()
    params = ExplainParams(sampler="marginal", window=8, stride=4, samples=2, target="top2",
                           incremental="off")
    stats = random_stats()
    ref = explain(model, x, params, stats, runtime=Runtime(batch_size=8, backend="torch"))
    fast = explain(model, x, params, stats, runtime=Runtime(batch_size=8, backend="openvino"))
    doc = result_document(fast, model_name="toy", input_size=(24, 24), image_size=(24, 24),
                          crop_box=(0, 0, 24, 24), params=params, num_classes=4)
    # the result itself says what ran the scores: the sweep's backend, in fp32
    ran = doc["runtime"]["faithfulness"]
    assert ran["backend"] == doc["runtime"]["backend"] == "openvino"
    assert ran["precision"] == "fp32" and ran["passes_per_second"] > 0
    assert ref.runtime["faithfulness"]["backend"] == "torch"
    assert fast.faithfulness_passes == ref.faithfulness_passes > 0
    for got, want in zip(fast.faithfulness, ref.faithfulness, strict=True):
        for key in ("deletion_auc", "insertion_auc"):
            assert got[key] == pytest.approx(want[key], abs=1e-5)
            assert got["baseline"][key] == pytest.approx(want["baseline"][key], abs=1e-5)
        for curve in ("deletion", "insertion", "baseline_deletion", "baseline_insertion"):
            # curves are kept to 4 decimals: one unit of rounding apart at most
            np.testing.assert_allclose(got["curves"][curve], want["curves"][curve],
                                       atol=1.5e-4)


@pytest.mark.parametrize("update", [
    {},  # scores on, top3 of an output layer
    {"target": "1,3"},
    {"layer": "logits", "target": "top1"},
    {"faithfulness": False},
    {"layer": "features.0", "target": "top2"},  # a hidden layer has no scores
    {"sampler": "constant"},
])
def test_the_plan_at_submit_is_every_pass_the_engine_runs(update):
    from tests.support.toys import random_stats

    model, x = _case()
    params = ExplainParams(**{"sampler": "marginal", "window": 8, "stride": 8, "samples": 2,
                              "target": "top3", **update})
    seen: list[tuple[int, int]] = []
    expl = explain(model, x, params, random_stats(), runtime=Runtime(batch_size=8, backend="torch"),
                   progress=lambda d, t: seen.append((d, t)))
    n = plan(params, (24, 24))
    assert n["forward_passes"] == expl.forward_passes  # sweep + image + scores
    assert n["faithfulness_passes"] == expl.faithfulness_passes
    assert n["sweep_passes"] + n["faithfulness_passes"] == n["forward_passes"]
    # the engine's progress total (the callers add the image's pass) is fixed from the start
    assert {t + 1 for _, t in seen} == {n["forward_passes"]}
