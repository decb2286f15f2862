"""What a real ``pda serve`` answers to bytes that never become a request for the app: a
header section over the limit is a 431 problem document, a malformed request a 400 one
(uvicorn's own answer is plain text), and the server goes on serving."""

from __future__ import annotations

import json
import socket

import httpx

from pda.problems import PROBLEM_JSON
from service.protocol import MAX_HEADER_BYTES


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection; everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def problem_of(answer: bytes) -> tuple[int, dict[str, str], dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return status, {k.lower(): v for k, v in headers.items()}, json.loads(body)


def test_oversized_headers_and_malformed_requests_get_problem_documents(settings,
                                                                        start_server):
    server = start_server(settings)
    # the 200 kB header, through an ordinary client that keeps sending it
    r = httpx.get(f"{server.url}/livez", headers={"X-Big": "a" * 200_000}, timeout=10)
    assert r.status_code == 431, r.text
    assert r.headers["content-type"] == PROBLEM_JSON
    body = r.json()
    assert body["type"] == "/problems/headers-too-large" and body["status"] == 431
    assert str(MAX_HEADER_BYTES) in body["detail"]
    # the limit holds however the bytes arrive (h11 alone bounds only what it buffers)
    for size in (MAX_HEADER_BYTES + 100, 1_000_000):
        r = httpx.get(f"{server.url}/v1/models", headers={"X-Big": "a" * size}, timeout=10)
        assert r.status_code == 431, size
    # under the limit: served
    r = httpx.get(f"{server.url}/livez", headers={"X-Big": "a" * (MAX_HEADER_BYTES - 1000)})
    assert r.status_code == 200
    # a long URL is part of the same section
    r = httpx.get(f"{server.url}/v1/models?q={'a' * MAX_HEADER_BYTES}", timeout=10)
    assert r.status_code == 431

    for request in (b"GARBAGE\r\n\r\n", b"GET /livez HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
                    b"GET /livez HTTP/1.1\r\n\r\n"):  # HTTP/1.1 needs a Host header
        status, headers, body = problem_of(raw_exchange(server.port, request))
        assert status == 400, request
        assert headers["content-type"] == PROBLEM_JSON and headers["connection"] == "close"
        assert int(headers["content-length"]) == len(json.dumps(body))
        assert body["type"] == "/problems/malformed-request" and body["status"] == 400
        assert body["detail"].startswith("not a valid HTTP/1.1 request")
    assert server.http.get("/livez").status_code == 200
    assert "Traceback" not in server.log.read_text()
