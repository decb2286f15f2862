"""The OpenAPI document is exact: statuses, headers, binary bodies, typed models, security
from the settings, and presets whose fields a generated client does not send by default.
(test_openapi_client.py drives a generated client against a real server.)"""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from pda.defaults import PAPER, PRESETS
from pda.params import PRESET_FIELDS, ExplainParams, plan, with_preset
from tests.support.paths import CAT
from tests.support.service import make_settings
from tests.support.statuses import StatusRecorder

JOB = "/v1/explanations/{job_id}"


def spec_of(**settings) -> dict:
    from service.main import create_app

    return create_app(make_settings(**settings), start_worker=False).openapi()


def test_the_statuses_the_issue_found_undeclared_are_declared(clean_redis):
    paths = spec_of()["paths"]
    submit = paths["/v1/explanations"]["post"]["responses"]
    assert {"400", "404", "409", "413", "415", "422", "429", "503"} <= set(submit)
    for path, item in paths.items():
        for method, op in item.items():
            if path.startswith("/v1/"):  # rate limit and the store, on every call
                assert {"429", "503"} <= set(op["responses"]), (method, path)
                for code in ("429", "503"):
                    assert "Retry-After" in op["responses"][code]["headers"], (method, path)
    accepted = submit["202"]["headers"]
    assert accepted["Location"]["required"] is True
    assert {"Retry-After", "Idempotent-Replayed"} <= set(accepted)
    assert "Retry-After" in paths[JOB]["get"]["responses"]["200"]["headers"]
    assert "Retry-After" in paths[f"{JOB}/relevance"]["get"]["responses"]["409"]["headers"]
    # a route whose parameters cannot fail declares no 422
    assert "422" not in paths[JOB]["get"]["responses"]


def test_binary_bodies_and_typed_documents(clean_redis):
    doc = spec_of()
    paths, schemas = doc["paths"], doc["components"]["schemas"]
    binary = {"type": "string", "format": "binary"}
    for name in ("overlay.png", "input.png"):
        content = paths[f"{JOB}/{name}"]["get"]["responses"]["200"]["content"]
        assert content["image/png"]["schema"] == binary
        assert content["application/octet-stream"]["schema"] == binary
    npy = paths[f"{JOB}/relevance.npy"]["get"]["responses"]["200"]
    assert npy["content"]["application/octet-stream"]["schema"] == binary
    assert "Content-Disposition" in npy["headers"]
    result = paths[f"{JOB}/relevance"]["get"]["responses"]["200"]["content"]
    assert result["application/json"]["schema"] == {"$ref": "#/components/schemas/ResultDocument"}
    assert {"explanations", "prediction", "model"} <= set(schemas["ResultDocument"]["required"])
    assert paths["/metrics"]["get"]["responses"]["200"]["content"]["text/plain"]["schema"]
    ready = paths["/readyz"]["get"]["responses"]
    for code in ("200", "503"):
        assert ready[code]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/Readiness")
    assert schemas["ExplanationPublic"]["properties"]["links"]["$ref"].endswith("/JobLinks")


def test_png_is_octet_stream_only_to_a_client_that_asks(client):
    """The second declared PNG type is real: the server sends it when asked."""
    from service.routes.explanations import _png

    class Req:
        def __init__(self, accept: str) -> None:
            self.headers = {"accept": accept}

    assert _png(Req("application/octet-stream"), b"x").media_type == "application/octet-stream"
    for accept in ("", "*/*", "image/png", "image/*, application/octet-stream"):
        assert _png(Req(accept), b"x").media_type == "image/png", accept


def test_security_is_required_exactly_when_the_server_has_keys(clean_redis):
    open_doc, keyed = spec_of(), spec_of(api_keys="k1,k2")
    assert "securitySchemes" not in open_doc["components"]
    assert {"bearer", "apiKey"} == set(keyed["components"]["securitySchemes"])
    for path, item in keyed["paths"].items():
        for method, op in item.items():
            plain = open_doc["paths"][path][method]
            assert "security" not in plain and "401" not in plain["responses"]
            if path.startswith("/v1/"):
                assert op["security"] == [{"bearer": []}, {"apiKey": []}]
                assert {} not in op["security"]
                assert "WWW-Authenticate" in op["responses"]["401"]["headers"]
            else:  # probes and metrics never need a key
                assert "security" not in op


def test_preset_fields_have_no_schema_default_but_the_others_do(clean_redis):
    body = spec_of()["paths"]["/v1/explanations"]["post"]["requestBody"]["content"]
    form = body["multipart/form-data"]["schema"]["properties"]
    params = body["application/json"]["schema"]["properties"]["params"]["properties"]
    assert set(PRESET_FIELDS) == {f for values in PRESETS.values() for f in values}
    assert set(PAPER) | {"sampler"} <= set(PRESET_FIELDS)  # paper's four; fast's sampler
    for props in (form, params):
        for name in PRESET_FIELDS:
            assert "default" not in props[name], name
            for preset, values in PRESETS.items():
                if name in values:
                    assert f"{preset}: {values[name]}" in props[name]["description"]
            assert str(ExplainParams.model_fields[name].default) in props[name]["description"]
        assert props["target"]["default"] == "top3"  # a field no preset sets keeps its own
        assert all(p.get("default", 0) is not None for p in props.values())
    assert set(form["preset"]["enum"]) == set(PRESETS)


def _submit(client, **fields) -> httpx.Response:
    return client.post("/v1/explanations", files={"image": ("c.png", CAT.read_bytes())},
                       data={"faithfulness": "false", **fields})


def test_preset_and_explicit_fields_behave_as_documented(client):
    """Absent = the preset's value; a field sent on purpose wins over the preset."""
    size = (224, 224)
    quick = {"faithfulness": False}  # as _submit sends
    paper = plan(ExplainParams(**with_preset(quick, "paper")), size)["forward_passes"]
    r = _submit(client, preset="paper")
    assert r.status_code == 202, r.text
    assert r.json()["progress"]["total"] == paper
    assert {k: r.json()["params"][k] for k in PAPER} == PAPER
    r = _submit(client, preset="paper", stride="2")
    mixed = plan(ExplainParams(**{**PAPER, "stride": 2, **quick}), size)["forward_passes"]
    assert r.json()["params"]["stride"] == 2 and r.json()["progress"]["total"] == mixed


def test_the_fast_preset_is_occlusion_and_an_explicit_sampler_wins(client):
    size = (224, 224)
    quick = {"faithfulness": False}
    r = _submit(client, preset="fast")
    assert r.status_code == 202, r.text
    assert r.json()["params"]["sampler"] == "constant" and r.json()["params"]["samples"] == 1
    fast = plan(ExplainParams(sampler="constant", **quick), size)["forward_passes"]
    assert r.json()["progress"]["total"] == fast == 626  # 625 windows, one pass each, + 1
    r = _submit(client, preset="fast", sampler="marginal")
    assert r.json()["params"]["sampler"] == "marginal"
    form = client.get("/openapi.json").json()["paths"]["/v1/explanations"]["post"][
        "requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert "default" not in form["sampler"]  # a generated client must not send it unasked


def test_predictions_body_is_the_parameter_model(client):
    body = client.get("/openapi.json").json()["paths"]["/v1/predictions"]["post"]
    form = body["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert {"image", "model", "top", "fit"} <= set(form)
    assert form["fit"]["enum"] == ["crop", "pad", "squash"] and form["fit"]["default"]
    r = client.post("/v1/predictions", files={"image": ("c.png", CAT.read_bytes())},
                    data={"fit": "stretch"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "fit"


def test_the_recorder_catches_an_undeclared_status():
    """The session check can fail: a route answering a status its document lacks."""
    app = FastAPI()

    @app.get("/teapot", responses={200: {"description": "ok"}})
    def teapot(brew: bool = False):
        from fastapi.responses import JSONResponse

        return JSONResponse({}, status_code=418 if brew else 200)

    recorder = StatusRecorder(title=app.title)  # the session's recorder ignores it
    recorder.install()
    try:
        with TestClient(app) as c:
            c.get("/teapot")
            assert not recorder.undeclared()
            c.get("/teapot", params={"brew": "true"})
    finally:
        recorder.uninstall()
    assert recorder.undeclared() == ["GET /teapot answered 418 (1x), declared: 200, 422"]


def test_the_session_recorder_sees_this_suite(client, declared_statuses):
    client.get("/v1/explanations/nope")
    assert ("get", JOB, 404) in declared_statuses.received()


@pytest.mark.parametrize("keys", ["", "k1"])
def test_operation_ids_are_the_handlers_names(clean_redis, keys):
    ops = {op["operationId"] for item in spec_of(api_keys=keys)["paths"].values()
           for op in item.values()}
    assert {"create_explanation", "get_relevance", "create_prediction", "readyz"} <= ops
