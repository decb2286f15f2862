"""A job whose sampler would not finish on the deployment's workers is refused at submit
(pda.costs through service/routes/explanations._validate), naming the limit and what to
use instead (the CLI's refusal: tests/pda/test_costs.py)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from pda.costs import WORKER_BASE_BYTES
from tests.support.service import assert_problem, make_settings, submit

QUICK = {"window": "56", "stride": "56", "samples": "1", "faithfulness": "false"}


def _client(**overrides) -> TestClient:
    from service.main import create_app

    return TestClient(create_app(make_settings(**overrides), start_worker=False),
                      raise_server_exceptions=False)


def test_a_ring_too_wide_to_prepare_in_time_is_a_422_naming_the_target_and_what_fits(client):
    r = submit(client, data={**QUICK, "window": "10", "padding": "32"})
    body = assert_problem(r, 422, "the target is 10 s", field="window")
    assert body["type"] == "/problems/sampler-limit"
    assert "padding <= " in body["detail"] and "sampler=marginal" in body["detail"]
    assert body["estimated_setup_seconds"] > 10
    assert client.app.state.pda.queue.count == 0  # nothing was queued
    padding = body["detail"].split("padding <= ")[1].split(",")[0]
    ok = submit(client, data={**QUICK, "window": "10", "padding": padding})
    assert ok.status_code == 202, ok.text


def test_window_200_and_the_quick_settings_are_accepted_by_the_default_deployment(client):
    assert submit(client, data=QUICK).status_code == 202
    r = submit(client, data={**QUICK, "window": "200", "stride": "8"})
    assert r.status_code == 202, r.text


def test_a_small_worker_refuses_window_200_naming_its_memory_setting(clean_redis):
    small = WORKER_BASE_BYTES + 512 * 2**20 + 200 * 2**20  # base + cache + 200 MB
    with _client(worker_memory_bytes=small) as c:
        r = submit(c, data={**QUICK, "window": "200"})
        body = assert_problem(r, 422, "PDA_WORKER_MEMORY_BYTES", field="window")
        assert body["type"] == "/problems/sampler-limit"
        assert body["limit_bytes"] == small and body["estimated_bytes"] > 200 * 2**20
        assert "window <= " in body["detail"] and "sampler=marginal" in body["detail"]
        assert submit(c, data={**QUICK, "window": "200", "sampler": "marginal"}
                      ).status_code == 202
        assert c.app.state.pda.queue.count == 1


def test_many_samples_of_a_large_window_are_refused_before_anything_is_stored(client):
    r = submit(client, data={**QUICK, "window": "100", "samples": "1000"})
    body = assert_problem(r, 422, "samples <= ")
    assert "GiB of worker memory" in body["detail"]
    assert client.app.state.pda.queue.count == 0


@pytest.mark.parametrize("field,value", [("padding", "20"), ("window", "224")])
def test_a_patch_over_the_reference_side_is_refused(client, field, value):
    data = {**QUICK, "window": "224", "padding": "20", field: value}
    assert_problem(submit(client, data=data), 422, "reference images")


def test_a_large_window_at_stride_1_is_refused_for_its_maps_naming_a_stride_that_fits(client):
    r = submit(client, data={**QUICK, "window": "150", "stride": "1", "sampler": "constant"})
    body = assert_problem(r, 422, "stride >= 2")
    assert "(sampler and maps)" in body["detail"] and body["estimated_bytes"] > 3 * 2**30
    ok = submit(client, data={**QUICK, "window": "150", "stride": "2", "sampler": "constant"})
    assert ok.status_code == 202, ok.text
