"""The OpenAPI document and the validator agree, in both directions: what the schema allows
is accepted (or refused for a reason it cannot state, named in the problem), what it
forbids is refused, every documented example gets its documented status, and the
protocol-level answers (OPTIONS, 405, credentials) say what the document says.
(test_fuzz.py drives the same agreement with Schemathesis.)"""

from __future__ import annotations

import base64
import re
import shlex
from collections.abc import Iterator

import httpx
import pytest
from pydantic import ValidationError

from pda.params import LAYER_PATTERN, TARGET_PATTERN, ExplainParams
from service.forms import FILL_PATTERN, NULLABLE_FORM_FIELDS, parse_fill
from service.openapi_examples import JOB_ID
from tests.support.paths import CAT, ROOT
from tests.support.service import PNG, SMALL, assert_problem, submit, wait_for
from tests.support.waiting import wait_until

B64 = base64.b64encode(PNG).decode()
METHODS = ("get", "put", "post", "delete", "patch")


def spec(client) -> dict:
    return client.get("/openapi.json").json()


def operations(doc: dict) -> Iterator[tuple[str, str, dict]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                yield method, path, op


def success(op: dict) -> int:
    return int(next(code for code in op["responses"] if code.startswith("2")))


# --- a form's null --------------------------------------------------------------------------

def test_the_forms_nullable_fields_are_declared_so_and_null_or_empty_means_unset(client):
    form = spec(client)["paths"]["/v1/explanations"]["post"]["requestBody"]["content"][
        "multipart/form-data"]["schema"]
    declared = {name for name, prop in form["properties"].items()
                if {"type": "null"} in prop.get("anyOf", [])}
    assert declared == NULLABLE_FORM_FIELDS == {"fill", "drilldown", "coarse_stride"}
    for name in sorted(declared):
        for unset in ("null", ""):
            r = submit(client, data={**SMALL, name: unset})
            assert r.status_code == 202, (name, unset, r.text)
            assert r.json()["params"][name] is None
    # a field the schema does not let be null is not silently unset by "null" or ""
    for name in ("window", "target", "sampler", "layer"):
        for value in ("null", ""):
            assert_problem(submit(client, data={**SMALL, name: value}), 422, field=name)


def test_the_form_refuses_fields_its_schema_does_not_list(client):
    form = spec(client)["paths"]["/v1/explanations"]["post"]["requestBody"]["content"][
        "multipart/form-data"]["schema"]
    assert form["additionalProperties"] is False
    assert_problem(submit(client, data={**SMALL, "windw": "8"}), 422, field="windw")


# --- patterns: the schema's and the validator's are one ------------------------------------

TARGETS = ["top3", "TOP20", " top003 ", "top21", "top0", "top", "3", "281,285", "1 , 2",
           ",".join(map(str, range(20))), ",".join(map(str, range(21))), "1,", "-1", "1.5",
           "top3\n", "１", "0" * 10, "٣"]
LAYERS = ["output", "logits", "_blocks.3", "_blocks.3 ", "", "a" * 200, "a" * 201, "x-y",
          "é"]
FILLS = ["0.5,0.5,0.5", "1,1,1", "0,0,0", "1.5,0,0", "..,1,1", " 0 , .3 ,1.0 ", "0.,1.,0",
         "1.01,0,0", "nan,0,0", "1e-3,0,0", "0.5,0.5", "-0,0,0"]


def _accepted(**field) -> bool:
    try:
        ExplainParams(**field)
    except (ValidationError, ValueError):
        return False
    return True


@pytest.mark.parametrize("value", TARGETS)
def test_target_pattern_and_validator_agree(value):
    assert bool(re.search(TARGET_PATTERN, value)) == _accepted(target=value), value


@pytest.mark.parametrize("value", LAYERS)
def test_layer_pattern_and_validator_agree(value):
    assert bool(re.search(LAYER_PATTERN, value)) == _accepted(layer=value), value


@pytest.mark.parametrize("value", FILLS)
def test_fill_pattern_and_parser_agree(value):
    try:
        ok = _accepted(fill=parse_fill(value))
    except ValueError:
        ok = False
    assert bool(re.search(FILL_PATTERN, value)) == ok, value


def test_the_json_fill_declares_its_bounds(client):
    params = spec(client)["paths"]["/v1/explanations"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]["properties"]["params"]["properties"]
    items = params["fill"]["anyOf"][0]["prefixItems"]
    assert all(i["minimum"] == 0 and i["maximum"] == 1 for i in items)
    r = client.post("/v1/explanations", json={"image_base64": B64, "params": {
        "fill": [1.5, 0, 0], "faithfulness": False}})
    assert_problem(r, 422, field="fill.0")


# --- JSON bodies ----------------------------------------------------------------------------

@pytest.mark.parametrize("route", ["/v1/explanations", "/v1/predictions"])
def test_image_base64_says_what_it_accepts(client, route):
    body = spec(client)["paths"][route]["post"]["requestBody"]
    assert body["required"] is True
    prop = body["content"]["application/json"]["schema"]["properties"]["image_base64"]
    assert prop["minLength"] >= 1 and prop["format"] == "byte"
    assert_problem(client.post(route, json={"image_base64": ""}), 422, field="image_base64")
    assert_problem(client.post(route), 422, field="image")  # the body is required


@pytest.mark.parametrize("params,field", [
    ({"params": None}, "params"),
    ({"params": {"model": None}}, "model"),
    ({"params": {"preset": {"a": 1}}}, "preset"),  # was a 500 (unhashable dict)
    ({"params": {"preset": ["paper"]}}, "preset"),
    ({"params": {"preset": ""}}, "preset"),
    ({"model": 5}, "model"),
    ({"params": {"model": "m" * 201}}, "model"),
])
def test_json_meta_fields_are_what_the_schema_says(client, params, field):
    r = client.post("/v1/explanations", json={"image_base64": B64, **params})
    assert_problem(r, 422, field=field)


# --- OPTIONS and 405 ------------------------------------------------------------------------

def test_options_and_405_list_every_method_of_every_path(client):
    checked = 0
    for path, item in spec(client)["paths"].items():
        url = path.replace("{job_id}", "abc").replace("{name}", "efficientnet_lite0")
        methods = {m.upper() for m in item if m in METHODS}
        allow = methods | {"OPTIONS"} | ({"HEAD"} if "GET" in methods else set())
        r = client.options(url)
        assert r.status_code == 204, (path, r.text)
        assert set(r.headers["allow"].split(", ")) == allow, path
        other = next(m for m in ("PATCH", "PUT", "POST") if m not in methods)
        r = client.request(other, url)
        assert_problem(r, 405)
        assert set(r.headers["allow"].split(", ")) == allow, path
        checked += 1
    assert checked >= 12
    job = client.options("/v1/explanations/abc").headers["allow"]
    assert job == "DELETE, GET, HEAD, OPTIONS"  # the Allow: GET


# --- credentials ----------------------------------------------------------------------------

def test_every_credential_sent_must_be_valid(clean_redis):
    from tests.service.test_safety import app_client

    with app_client(api_keys="alpha,beta") as c:
        def get(**headers) -> int:
            return c.get("/v1/models", headers=headers).status_code

        assert get(**{"X-API-Key": "alpha"}) == 200
        assert get(Authorization="Bearer alpha") == 200
        assert get(Authorization="Bearer alpha", **{"X-API-Key": "alpha"}) == 200
        # a valid key does not excuse a wrong or unreadable one beside it
        assert get(Authorization="Bearer wrong", **{"X-API-Key": "alpha"}) == 401
        assert get(Authorization="Bearer alpha", **{"X-API-Key": "wrong"}) == 401
        assert get(Authorization="Basic YWxwaGE6", **{"X-API-Key": "alpha"}) == 401
        assert get(Authorization="Bearer alpha", **{"X-API-Key": "beta"}) == 401


# --- every documented example ---------------------------------------------------------------

def _curl(sample: str, job_id: str, batch_id: str) -> tuple[str, str, dict]:
    """A documented curl command as (method, URL path and query, httpx keywords); a
    repeated file part (a batch's images) is sent repeated."""
    args = shlex.split(sample.replace("$BATCH", batch_id))[1:]
    method, url, files, data = None, None, [], {}
    while args:
        arg = args.pop(0)
        if arg == "-X":
            method = args.pop(0)
        elif arg == "-o":
            args.pop(0)
        elif arg == "-F":
            key, value = args.pop(0).split("=", 1)
            if value.startswith("@"):
                files.append((key, (value[1:], (ROOT / value[1:]).read_bytes())))
            else:
                data[key] = value
        else:
            url = arg
    assert url is not None, sample
    target = httpx.URL(url.replace(JOB_ID, job_id))
    kwargs = {"files": files, "data": data} if files else {}
    return method or ("POST" if files else "GET"), target.raw_path.decode(), kwargs


def test_every_documented_example_gets_its_documented_status(worker_client):
    """Each operation's request-body examples and its curl sample, sent as documented
    (a finished job standing in for the example's job id), get the operation's
    documented success status: 200 or 202, never the 422 of a placeholder."""
    c = worker_client
    quick = {"window": "56", "stride": "56", "sampler": "constant", "faithfulness": "false"}
    r = c.post("/v1/explanations", files={"image": ("cat.png", CAT.read_bytes())},
               data=quick)
    job_id = r.json()["id"]
    assert wait_for(c, job_id)["status"] == "finished"
    r = c.post("/v1/batches", files=[("image", ("cat.png", CAT.read_bytes()))], data=quick)
    batch_id = r.json()["id"]
    wait_until("the batch to end", lambda: c.get(f"/v1/batches/{batch_id}").json()[
        "status"] == "finished", timeout=240)
    sent = 0
    created, deletes = [], []
    for method, path, op in operations(spec(c)):
        status = success(op)
        for media, content in op.get("requestBody", {}).get("content", {}).items():
            if "example" in content:
                assert media == "application/json", (path, media)
                r = c.request(method, path, json=content["example"])
                assert r.status_code == status, (path, r.text)
                created.append((path, r.json().get("id")))
                sent += 1
        for sample in op.get("x-codeSamples", []):
            if sample["lang"] != "curl":
                continue
            verb, url, kwargs = _curl(sample["source"], job_id, batch_id)
            assert verb.lower() == method, sample
            if method == "delete":
                deletes.append((verb, url, status))  # last: they delete what the others read
                continue
            r = c.request(verb, url, **kwargs)
            assert r.status_code == status, (sample["source"], r.text[:300])
            if path in ("/v1/explanations", "/v1/batches"):
                created.append((path, r.json().get("id")))
            sent += 1
    assert len(deletes) == 2  # a job and a batch
    for verb, url, status in deletes:
        r = c.request(verb, url)
        assert r.status_code == status, (url, r.text)
        if url.startswith("/v1/explanations/"):
            assert r.json()["status"] == "canceled", r.text
    for path, other in created:  # the examples' default jobs need no worker time
        if other:
            c.delete(f"{path}/{other}")
    assert sent + 1 >= 15
