"""The viewer's files and the offline docs, checked without a browser (fast)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient

from pda.catalog import builtin_metadata
from pda.defaults import FAST, PAPER
from pda.params import ExplainParams
from pda.settings import Settings
from service.routes.ui import STATIC_DIR


@pytest.fixture
def client() -> Iterator[TestClient]:
    from service.main import create_app

    app = create_app(Settings(redis_url=None), start_worker=False)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


class _Inputs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.attrs: dict[str, dict[str, str | None]] = {}

    def handle_starttag(self, tag: str, attrs) -> None:
        a = dict(attrs)
        if "id" in a:
            self.attrs[a["id"]] = a


def test_viewer_defaults_and_paper_preset_match_the_engine():
    page = _Inputs()
    page.feed((STATIC_DIR / "index.html").read_text())
    defaults = ExplainParams()
    for name in ("window", "stride", "samples", "padding", "target", "layer", "seed"):
        assert page.attrs[name]["value"] == str(getattr(defaults, name)), name
    assert page.attrs["sampler"]["data-default"] == defaults.sampler
    assert page.attrs["fit"]["data-default"] == defaults.fit
    assert page.attrs["faithfulness"]["data-default"] == str(defaults.faithfulness).lower()
    assert json.loads(page.attrs["paper"]["data-preset"]) == PAPER
    assert json.loads(page.attrs["fast"]["data-preset"]) == FAST
    for name in ("image", "model", "sampler", "fit", "window", "stride", "samples", "target",
                 "layer", "seed", "padding", "fill", "faithfulness", "apikey"):
        assert f'<label for="{name}">' in (STATIC_DIR / "index.html").read_text(), name


@pytest.mark.parametrize("path", ["/", "/docs", "/redoc"])
def test_pages_load_scripts_and_styles_only_from_this_server(client, path):
    r = client.get(path)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    urls = re.findall(r'(?:src|href)="([^"]*)"', r.text) + re.findall(r"url: '([^']*)'", r.text)
    assert urls and not [u for u in urls if re.match(r"(https?:)?//", u)], urls
    for u in urls:
        if u.endswith((".js", ".css", ".png", ".svg")):
            asset = client.get(u if u.startswith("/") else f"/{u}")
            assert asset.status_code == 200, u


def test_vendored_assets_keep_their_licences():
    vendor = STATIC_DIR / "vendor"
    assert "Apache License" in (vendor / "swagger-ui" / "LICENSE").read_text()
    assert "MIT License" in (vendor / "redoc" / "LICENSE").read_text()
    assert "cdn.redoc.ly" not in (vendor / "redoc" / "redoc.standalone.js").read_text()


def test_every_route_is_documented_with_an_example_and_problem_errors(client):
    doc = client.get("/openapi.json").json()
    # keys off: no call is marked as needing one (tests/service/test_openapi.py: keys on)
    assert "securitySchemes" not in doc["components"]
    assert "HTTPValidationError" not in json.dumps(doc)
    for path, item in doc["paths"].items():
        for method, op in item.items():
            where = f"{method.upper()} {path}"
            assert op.get("summary") and op.get("description"), where
            assert op["x-codeSamples"][0]["source"].startswith("curl"), where
            ok = next(c for c in ("200", "202") if c in op["responses"])
            content = op["responses"][ok]["content"]
            if "application/json" in content:
                assert "example" in content["application/json"], where
            for code, resp in op["responses"].items():
                if code[0] in "45" and path != "/readyz":  # its 503 is the readiness body
                    assert list(resp["content"]) == ["application/problem+json"], where
            assert "401" not in op["responses"] and "security" not in op, where
    upload = doc["paths"]["/v1/predictions"]["post"]["requestBody"]["content"]
    assert "image" in upload["multipart/form-data"]["schema"]["properties"]


def test_unknown_static_file_is_a_problem_document(client):
    r = client.get("/static/nope.js")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"


def test_the_viewer_shows_the_coverage_warning_and_real_layer_names():
    html = (STATIC_DIR / "index.html").read_text()
    js = (STATIC_DIR / "viewer.js").read_text()
    page = _Inputs()
    page.feed(html)
    assert "hidden" in page.attrs["coverage-warning"]
    assert "doc.coverage.warning" in js and '$("coverage-warning").hidden = !warning' in js
    hint = re.search(r'id="layer-hint"[^>]*>([^<]*)', html)[1]
    names = {x["name"] for x in builtin_metadata("efficientnet_lite0")["layers"]}
    assert [w for w in re.findall(r"_?[a-z]+\.[0-9]+", hint) if w in names], hint
