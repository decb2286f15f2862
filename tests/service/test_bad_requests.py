"""The bad-input corpus, sent to a real ``pda serve`` over one keep-alive connection:
every entry gets its 4xx problem document, none a 5xx, and the connection survives."""

from __future__ import annotations

import base64
import http.client
import json
import uuid

import pytest

from tests.support.corpus import CORPUS
from tests.support.figures import record
from tests.support.service import PNG, make_settings

pytestmark = pytest.mark.slow


def multipart(fields: dict[str, str], image: bytes | None = PNG) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
             .encode() for k, v in fields.items()]
    if image is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
                     f'filename="x.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
                     + image + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), \
        f"multipart/form-data; boundary={boundary}"


def json_body(doc) -> tuple[bytes, str]:
    return json.dumps(doc).encode(), "application/json"


B64 = base64.b64encode(PNG).decode()
#: name -> (method, path, (body, content type), expected status)
REQUESTS: dict[str, tuple[str, str, tuple[bytes, str], int]] = {
    "json 50,000 [": ("POST", "/v1/explanations", (b"[" * 50_000, "application/json"), 400),
    'json {"a": x 20,000 to predictions': (
        "POST", "/v1/predictions", (b'{"a":' * 20_000, "application/json"), 400),
    "json 5,000-digit integer in params": (
        "POST", "/v1/explanations",
        (b'{"image_base64": "' + B64.encode() + b'", "params": {"window": ' + b"9" * 5000
         + b"}}", "application/json"), 400),
    "form 5,000-digit integer": ("POST", "/v1/explanations",
                                 multipart({"window": "9" * 5000}), 422),
    "predictions top=superscript two": ("POST", "/v1/predictions", multipart({"top": "²"}), 422),
    "predictions top=0": ("POST", "/v1/predictions", multipart({"top": "0"}), 422),
    "predictions top=Arabic-Indic five": ("POST", "/v1/predictions",
                                          multipart({"top": "٥"}), 422),
    "json not an object": ("POST", "/v1/explanations", json_body([1, 2, 3]), 422),
    "json params not an object": ("POST", "/v1/explanations",
                                  json_body({"image_base64": B64, "params": "x"}), 422),
    "json broken": ("POST", "/v1/explanations", (b'{"image_base64": ', "application/json"), 400),
    "json invalid utf-8": ("POST", "/v1/predictions", (b'{"a": "\xff\xfe"}', "application/json"),
                           400),
    "form without image": ("POST", "/v1/explanations", multipart({"window": "8"}, None), 422),
    "form NaN fill": ("POST", "/v1/explanations", multipart({"fill": "nan,0,0"}), 422),
    "form infinite seed": ("POST", "/v1/explanations", multipart({"seed": "inf"}), 422),
    "form unknown field": ("POST", "/v1/explanations", multipart({"colour": "red"}), 422),
    "text/plain": ("POST", "/v1/explanations", (b"hello", "text/plain"), 415),
    **{f"file {name}": ("POST", "/v1/explanations", multipart({}, data), status)
       for name, (data, status, _) in CORPUS.items()},
}


def test_no_body_gets_a_5xx_and_the_connection_survives(clean_redis, start_server):
    server = start_server(make_settings())
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    statuses = {}
    for name, (method, path, (body, ctype), expected) in REQUESTS.items():
        conn.request(method, path, body=body, headers={"Content-Type": ctype})
        r = conn.getresponse()
        payload = r.read()
        statuses[name] = r.status
        assert r.status == expected, (name, r.status, payload[:300])
        assert r.getheader("content-type").startswith("application/problem+json"), name
        doc = json.loads(payload)
        assert doc["status"] == expected and doc["detail"] and "Traceback" not in doc["detail"]
        # the same keep-alive connection still answers (no reset after the error)
        conn.request("GET", "/livez")
        assert conn.getresponse().read() == b'{"status":"ok"}', name
    log = server.log.read_text()
    assert "Traceback" not in log, log[-3000:]
    fives = sum(1 for s in statuses.values() if s >= 500)
    assert fives == 0
    record("bad_request_corpus", requests=len(statuses), responses_5xx=fives)
